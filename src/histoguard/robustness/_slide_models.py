"""The slide model an audit stress-tests and attacks: one ``train`` model folder, or every fold
of a k-fold ``train`` output, each held-out slide scored only by models that never saw it.

A ``train`` output records which slides each fold's model trained, validated and calibrated on
(``splits.json``; ``fold_<i>`` is split ``i``). The audit scores a slide with the fold models
whose split holds it in its test part (several seeds of one fold combined as
:func:`histoguard.mil.predict` combines folds: the mean of their class probabilities), never
with a model that saw it, and skips a slide every fold saw. A slide in no split at all (another
cohort) is unseen by every fold and is scored by the ensemble of all of them, as ``predict``
would. Without ``splits.json`` nothing can be proven: the audit then says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from histoguard.errors import AuditDataError, CohortError, ModelMismatchError
from histoguard.mil import MILModel
from histoguard.mil._ensemble import ENSEMBLE_RULE, FoldEnsemble, load_models, split_index
from histoguard.mil._splits import read_splits_file

#: How the audit chooses the model for each slide, as ``audit.json`` records it.
HELD_OUT_RULE = (
    "each slide is scored only by the fold models that never trained, validated or calibrated "
    "on it (splits.json); a slide every fold saw is left out"
)


@dataclass(frozen=True)
class HeldOut:
    """Which of the audit's slides a slide model may be judged on, and by which model.

    Attributes:
        kept: indices (into the slides asked about) of the slides kept.
        models: the model scoring each kept slide, aligned with ``kept``.
        record: for ``audit.json``: the rule, whether disjointness is proven, each kept slide
            with the model folders that scored it, each left-out slide with the reason.
    """

    kept: list[int]
    models: list[MILModel]
    record: dict[str, Any]


@dataclass(frozen=True)
class SlideModel:
    """The model the audit uses, its class names, where it came from, and what it saw.

    Attributes:
        model: one fold's model, or the :class:`~histoguard.mil.FoldEnsemble` of all folds.
        labels: class names in output index order.
        folders: the model folders loaded (one per fold or seed).
        members: each folder's model, aligned with ``folders``.
        seen: per member, the slides it trained, validated or calibrated on; None when no
            ``splits.json`` tells (disjointness cannot be proven).
        splits_file: the ``splits.json`` read, if any.
    """

    model: MILModel
    labels: list[str]
    folders: tuple[Path, ...]
    members: tuple[MILModel, ...] = ()
    seen: tuple[frozenset[str], ...] | None = None
    splits_file: Path | None = None
    _ensembles: dict[tuple[int, ...], MILModel] = field(default_factory=dict, repr=False)

    def describe(self) -> dict[str, Any]:
        """Which models were used, for ``audit.json``: folders, count and how combined."""
        return {
            "models": [str(p) for p in self.folders],
            "n_models": len(self.folders),
            "combination": ENSEMBLE_RULE if len(self.folders) > 1 else "single model",
        }

    def held_out(self, slides: Sequence[str]) -> HeldOut:
        """The model for each of ``slides`` that never saw it (see the module docstring)."""
        if self.seen is None:
            record = {
                "rule": HELD_OUT_RULE,
                "proven": False,
                "reason": "no splits.json beside the model: which slides it saw is unknown; "
                "audit a `histoguard train` output, or slides you know it never saw",
                "slides": [{"slide": s, "models": [str(p) for p in self.folders]} for s in slides],
                "excluded": [],
            }
            return HeldOut(list(range(len(slides))), [self.model] * len(slides), record)
        kept, models, used, excluded = [], [], [], []
        for i, slide in enumerate(slides):
            unseen = tuple(m for m, saw in enumerate(self.seen) if slide not in saw)
            if not unseen:
                excluded.append({"slide": slide, "reason": "in the training, validation or "
                                 "calibration part of every fold's model"})  # fmt: skip
                continue
            kept.append(i)
            models.append(self._combined(unseen))
            used.append({"slide": slide, "models": [str(self.folders[m]) for m in unseen]})
        record = {
            "rule": HELD_OUT_RULE,
            "proven": True,
            "splits_file": str(self.splits_file),
            "slides": used,
            "excluded": excluded,
        }
        return HeldOut(kept, models, record)

    def _combined(self, members: tuple[int, ...]) -> MILModel:
        """One model for these members (the very ensemble object for a repeated choice)."""
        if len(members) == len(self.members):
            return self.model
        if members not in self._ensembles:
            chosen = [self.members[m] for m in members]
            self._ensembles[members] = chosen[0] if len(chosen) == 1 else FoldEnsemble(chosen)
        return self._ensembles[members].eval()


def load_slide_model(path: Path, embed_dim: int) -> SlideModel:
    """Every model under a ``train`` output (all folds) or one model folder, with the slides
    each saw when a ``splits.json`` tells.

    Args:
        path: a ``histoguard train`` output (``fold_*`` folders) or one folder with
            ``model.json`` (a fold folder inside a ``train`` output knows its splits too).
        embed_dim: the audited encoder's feature length, which the models must take.

    Raises:
        AuditDataError: no model there, folds that disagree on classes, models trained on
            features of another length, or a ``splits.json`` that cannot be read (the message
            names the folder and the fix).
    """
    try:
        model, labels, folders = load_models(path)
    except (FileNotFoundError, ModelMismatchError) as error:
        raise AuditDataError(str(error)) from None
    if model.in_dim != embed_dim:
        raise AuditDataError(
            f"{folders[0]}: the model takes {model.in_dim}-d features but the encoder makes "
            f"{embed_dim}-d ones; audit it with the encoder it was trained on"
        )
    members = tuple(model.members) if isinstance(model, FoldEnsemble) else (model,)
    splits_file = next(
        (p / "splits.json" for p in (path, path.parent) if (p / "splits.json").is_file()), None
    )
    seen = _seen_slides(splits_file, folders) if splits_file is not None else None
    return SlideModel(
        model=model, labels=labels, folders=folders, members=members,  # type: ignore[arg-type]
        seen=seen, splits_file=splits_file if seen is not None else None,
    )  # fmt: skip


def _seen_slides(splits_file: Path, folders: Sequence[Path]) -> tuple[frozenset[str], ...] | None:
    """Per model folder, its split's training, validation and calibration slides; None when a
    folder's name does not say which split it is (``fold_<i>`` or ``fold_<i>-seed<j>``)."""
    try:
        splits, _ = read_splits_file(splits_file)
    except CohortError as error:
        raise AuditDataError(f"{error} (needed to know which slides each model saw)") from None
    seen = []
    for folder in folders:
        index = split_index(folder)
        if index is None or index >= len(splits):
            return None
        split = splits[index]
        seen.append(frozenset((*split.train, *split.val, *split.calibration)))
    return tuple(seen)
