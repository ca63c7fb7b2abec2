"""The slide model an audit stress-tests and attacks: one ``train`` model folder, or every fold
of a k-fold ``train`` output combined exactly as :func:`histoguard.mil.predict` combines them
(the mean of the fold models' class probabilities).

The folds are wrapped as one differentiable :class:`~histoguard.mil.MILModel`, so the stress
test and the slide-level attack judge (and the attack's gradients follow) the ensemble that
``predict`` would use, not fold 0 alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from histoguard.errors import AuditDataError
from histoguard.mil import MILModel, MILOutput

#: How the audit combines several fold models, as recorded in ``audit.json``.
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
            raise ValueError("an ensemble needs at least one model")
        first = members[0]
        if any((m.in_dim, m.n_classes) != (first.in_dim, first.n_classes) for m in members):
            raise ValueError("ensemble members must share in_dim and n_classes")
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


@dataclass(frozen=True)
class SlideModel:
    """The model the audit uses, its class names, and where it came from.

    Attributes:
        model: one fold's model, or the :class:`FoldEnsemble` of all folds.
        labels: class names in output index order.
        folders: the model folders loaded (one per fold).
    """

    model: MILModel
    labels: list[str]
    folders: tuple[Path, ...]

    def describe(self) -> dict[str, Any]:
        """Which models were used, for ``audit.json``: folders, count and how combined."""
        return {
            "models": [str(p) for p in self.folders],
            "n_models": len(self.folders),
            "combination": ENSEMBLE_RULE if len(self.folders) > 1 else "single model",
        }


def load_slide_model(path: Path, embed_dim: int) -> SlideModel:
    """Every model under a ``train`` output (all folds) or one model folder.

    Args:
        path: a ``histoguard train`` output (``fold_*`` folders) or one folder with
            ``model.json``.
        embed_dim: the audited encoder's feature length, which the models must take.

    Raises:
        AuditDataError: no model there, folds that disagree on classes, or models trained on
            features of another length (the message names the folder and the fix).
    """
    from histoguard.mil import load_model
    from histoguard.mil._predict import model_dirs

    try:
        folders = model_dirs(path)
    except FileNotFoundError as error:
        raise AuditDataError(str(error)) from None
    loaded = [load_model(folder) for folder in folders]
    labels = loaded[0][1]
    for folder, (model, fold_labels) in zip(folders, loaded, strict=True):
        if model.in_dim != embed_dim:
            raise AuditDataError(
                f"{folder}: the model takes {model.in_dim}-d features but the encoder makes "
                f"{embed_dim}-d ones; audit it with the encoder it was trained on"
            )
        if fold_labels != labels:
            raise AuditDataError(
                f"{folder}: classes {fold_labels} differ from {folders[0]}'s {labels}; pass one "
                "train output whose folds share their classes"
            )
    models = [model for model, _ in loaded]
    combined = models[0] if len(models) == 1 else FoldEnsemble(models).eval()
    return SlideModel(model=combined, labels=labels, folders=tuple(folders))
