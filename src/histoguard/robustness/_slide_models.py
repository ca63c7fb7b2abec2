"""The slide model an audit stress-tests and attacks: one ``train`` model folder, or every fold
of a k-fold ``train`` output combined exactly as :func:`histoguard.mil.predict` combines them
(the mean of the fold models' class probabilities).

The folds are wrapped as one differentiable :class:`~histoguard.mil.FoldEnsemble` (the very
model ``predict`` runs), so the stress test and the slide-level attack judge (and the attack's
gradients follow) the ensemble ``predict`` would use, not fold 0 alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from histoguard.errors import AuditDataError, ModelMismatchError
from histoguard.mil import MILModel
from histoguard.mil._ensemble import ENSEMBLE_RULE, load_models


@dataclass(frozen=True)
class SlideModel:
    """The model the audit uses, its class names, and where it came from.

    Attributes:
        model: one fold's model, or the :class:`~histoguard.mil.FoldEnsemble` of all folds.
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
    try:
        model, labels, folders = load_models(path)
    except (FileNotFoundError, ModelMismatchError) as error:
        raise AuditDataError(str(error)) from None
    if model.in_dim != embed_dim:
        raise AuditDataError(
            f"{folders[0]}: the model takes {model.in_dim}-d features but the encoder makes "
            f"{embed_dim}-d ones; audit it with the encoder it was trained on"
        )
    return SlideModel(model=model, labels=labels, folders=folders)
