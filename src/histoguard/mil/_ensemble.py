"""Several trained models as one: the folds of a ``train`` output, combined the one way both
:func:`histoguard.mil.predict` and the robustness audit use (the mean of the folds' class
probabilities; attention averaged).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from histoguard.core._atomic import remove_stale_temporaries
from histoguard.errors import ConfigError, ModelMismatchError
from histoguard.mil._base import MILModel, MILOutput
from histoguard.mil._checkpoint import load_model

_FOLD_DIR = re.compile(r"^fold_(\d+)(?:-seed\d+)?$")


def fold_dir_name(split: int, seed: int = 0) -> str:
    """The folder ``train`` saves split ``split``'s model in: ``fold_<split>``, and
    ``fold_<split>-seed<seed>`` for the extra seeds of that split."""
    return f"fold_{split}" if seed == 0 else f"fold_{split}-seed{seed}"


def split_index(folder: Path) -> int | None:
    """The split (index into ``splits.json``) whose model a :func:`fold_dir_name` folder holds,
    or None for a folder not named that way."""
    match = _FOLD_DIR.match(folder.name)
    return None if match is None else int(match.group(1))


def remove_stale_run_temporaries(out: Path) -> int:
    """Delete every provably dead temporary of a ``train`` output folder: in ``out``, in its
    :func:`fold_dir_name` folders, and in the folders inside those (``harmonizer/``).

    Returns:
        The number of files removed.
    """
    folds = [d for d in out.iterdir() if d.is_dir() and split_index(d) is not None]
    inner = [d for fold in folds for d in fold.iterdir() if d.is_dir()]
    return sum(remove_stale_temporaries(folder) for folder in (out, *folds, *inner))


def model_dirs(model: Path) -> list[Path]:
    """The model folders under ``model``: itself if it holds ``model.json``, else ``fold_*``.

    Raises:
        FileNotFoundError: neither is there.
    """
    if (model / "model.json").is_file():
        return [model]
    folds = sorted(p for p in model.glob("fold_*") if (p / "model.json").is_file())
    if not folds:
        raise FileNotFoundError(
            f"{model}: no model.json here or in fold_* folders; pass a `train` output"
        )
    return folds


#: How several fold models are combined, as ``audit.json`` records it.
ENSEMBLE_RULE = "mean of the fold models' softmax probabilities (as `histoguard predict`)"


class FoldEnsemble(MILModel):
    """Several MIL models trained on the same classes, as one model.

    ``logits = log(mean_f softmax(logits_f))``: their softmax is the mean of the members'
    probabilities and their argmax the ensemble's prediction, as in :func:`histoguard.mil.predict`.
    Attention ``(B, N)`` is the members' mean (None unless every member gives attention), as in
    ``predict``'s heatmaps. Gradients flow through every member.

    Args:
        members: at least one model, all with the same ``in_dim`` and ``n_classes``.
    """

    members: torch.nn.ModuleList

    def __init__(self, members: Sequence[MILModel]) -> None:
        if not members:
            raise ConfigError("an ensemble needs at least one model")
        first = members[0]
        if any((m.in_dim, m.n_classes) != (first.in_dim, first.n_classes) for m in members):
            raise ConfigError("ensemble members must share in_dim and n_classes")
        super().__init__(first.in_dim, first.n_classes)
        self.members = torch.nn.ModuleList(members)

    def _forward(self, features: Tensor, mask: Tensor) -> MILOutput:
        # Members standardise their inputs themselves; this wrapper's own scaling is identity.
        outputs: list[MILOutput] = [member(features, mask) for member in self.members]
        log_probs = torch.stack([torch.log_softmax(o.logits, dim=1) for o in outputs])
        logits = torch.logsumexp(log_probs, dim=0) - math.log(len(outputs))
        maps = [o.attention for o in outputs if o.attention is not None]
        attention = torch.stack(maps).mean(dim=0) if len(maps) == len(outputs) else None
        return MILOutput(logits=logits, attention=attention)

    def config(self) -> dict[str, Any]:
        """The members' configs (an ensemble is saved as its fold folders, not as one model)."""
        return {"ensemble": [m.config() for m in self.members if isinstance(m, MILModel)]}


def load_models(model: Path) -> tuple[MILModel, list[str], tuple[Path, ...]]:
    """Every model of a ``train`` output (all ``fold_*``), or one model folder, as one model.

    Returns:
        The model (a :class:`FoldEnsemble` when there are several folds, else the one model),
        its class names in output order, and the folders loaded.

    Raises:
        FileNotFoundError: ``model`` holds no model.
        ModelMismatchError: folds that disagree on their classes or feature length.
    """
    folders = model_dirs(model)
    loaded = [load_model(folder) for folder in folders]
    first, labels = loaded[0]
    for folder, (member, member_labels) in zip(folders, loaded, strict=True):
        if member_labels != labels or member.in_dim != first.in_dim:
            raise ModelMismatchError(
                f"{folder}: classes {member_labels} on {member.in_dim}-d features differ from "
                f"{folders[0]}'s {labels} on {first.in_dim}-d; pass one train output"
            )
    models = [member for member, _ in loaded]
    combined = models[0] if len(models) == 1 else FoldEnsemble(models).eval()
    return combined, labels, tuple(folders)
