"""Harmonisation inside cross-validation, fitted on each fold's training rows only."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from histoguard.errors import ConfigError, UnknownCenterError
from histoguard.harmonize._combat import FloatArray
from histoguard.harmonize._harmonizer import (
    MIN_NEW_CENTER_SLIDES,
    Harmonizer,
    Method,
    design_from_labels,
)

NewCenters = Literal["error", "label-free"]


@dataclass(frozen=True)
class FoldHarmonization:
    """One fold: its harmoniser and its rows harmonised.

    Attributes:
        harmonizer: fitted on ``train`` rows only (plus label-free held-out centers, when
            asked for).
        train: (n_train,) row indices of the fold's training part.
        test: (n_test,) row indices of its held-out part.
        train_features: (n_train, D) the training rows harmonised.
        test_features: (n_test, D) the held-out rows harmonised.
    """

    harmonizer: Harmonizer
    train: npt.NDArray[np.int64]
    test: npt.NDArray[np.int64]
    train_features: FloatArray
    test_features: FloatArray


def harmonize_folds(
    features: npt.ArrayLike,
    batch: Sequence[str] | npt.ArrayLike,
    splits: Sequence[tuple[npt.ArrayLike, npt.ArrayLike]],
    *,
    labels: Sequence[object] | npt.ArrayLike | None = None,
    method: Method = "combat",
    parametric: bool = True,
    new_centers: NewCenters = "error",
    slides: Sequence[str] | npt.ArrayLike | None = None,
    min_slides: int = MIN_NEW_CENTER_SLIDES,
) -> list[FoldHarmonization]:
    """Fit one harmoniser per fold on that fold's training rows, and apply it to both parts.

    Nothing of a held-out row reaches its fold's fit: not its features, its label or its
    center. ``labels`` (when given) become covariates of the training rows only; both parts are
    then transformed the same way, without covariates (the training average), so a downstream
    model sees training and held-out rows prepared identically.

    Args:
        features: (N, D) embeddings.
        batch: (N,) center of each row.
        splits: per fold, (train indices, test indices), e.g. from
            ``sklearn.model_selection.GroupKFold(...).split(...)``.
        labels: (N,) biological labels to preserve, or None. Held-out labels are never read.
        method: ``"combat"`` or ``"covbat"``.
        parametric: parametric or non-parametric empirical Bayes.
        new_centers: what to do with held-out rows of a center absent from the fold's training
            rows: ``"error"`` raises, ``"label-free"`` fits that center from its own held-out
            features (:meth:`Harmonizer.fit_new_center`, which warns).
        slides: (N,) slide of each row, to count slides for the label-free minimum.
        min_slides: the label-free minimum number of slides.

    Raises:
        UnknownCenterError: a held-out center absent from training, with ``new_centers="error"``.
        ConfigError: overlapping or out-of-range indices, or shapes that do not fit.
    """
    x = np.asarray(features, dtype=np.float64)
    names = np.asarray(batch).astype(str)
    y = None if labels is None else np.asarray(labels)
    slide_ids = None if slides is None else np.asarray(slides).astype(str)
    folds = []
    for fold, (train_part, test_part) in enumerate(splits):
        train = np.asarray(train_part, dtype=np.int64)
        test = np.asarray(test_part, dtype=np.int64)
        if np.intersect1d(train, test).size:
            raise ConfigError(f"fold {fold}: training and held-out rows overlap")
        if train.size and (train.min() < 0 or max(train.max(), test.max(initial=0)) >= len(x)):
            raise ConfigError(f"fold {fold}: row indices outside 0..{len(x) - 1}")
        harmonizer = Harmonizer(method=method, parametric=parametric)
        covariates = None
        if y is not None:
            covariates = design_from_labels(y[train])
        harmonizer.fit(x[train], names[train], covariates)
        for center in sorted(set(names[test].tolist()) - set(harmonizer.centers)):
            if new_centers == "error":
                raise UnknownCenterError(center, harmonizer.centers)
            rows = test[names[test] == center]
            harmonizer.fit_new_center(
                x[rows],
                center,
                slides=None if slide_ids is None else slide_ids[rows],
                min_slides=min_slides,
            )
        folds.append(
            FoldHarmonization(
                harmonizer=harmonizer,
                train=train,
                test=test,
                train_features=harmonizer.transform(x[train], names[train]),
                test_features=harmonizer.transform(x[test], names[test]),
            )
        )
    return folds
