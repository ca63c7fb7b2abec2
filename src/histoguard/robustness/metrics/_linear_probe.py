"""A linear probe: how well a frozen embedding separates classes with a single linear layer.

Features are standardised, then a multinomial logistic regression (scikit-learn, L-BFGS,
classes weighted inversely to their frequency so that it optimises what balanced accuracy
measures) is fitted for each regularisation strength ``C`` of a grid. ``C`` is chosen on the
balanced accuracy of a validation split that keeps every slide on one side, and the probe is then
refitted on all the data it was given. This is the downstream model of PathoROB's average
performance drop, and :meth:`LinearProbe.as_torch` gives it to the adversarial attacks as a
differentiable module.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import torch
from threadpoolctl import threadpool_limits

from histoguard.errors import AuditDataError

if TYPE_CHECKING:  # scikit-learn loads on first use, not with the room
    from sklearn.linear_model import LogisticRegression

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

#: Default grid of inverse regularisation strengths, strongest regularisation first.
DEFAULT_C_GRID: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0)


@dataclass(frozen=True, kw_only=True, eq=False)
class LinearProbe:
    """A fitted linear probe on standardised embeddings.

    Attributes:
        classes: class names, sorted; column ``k`` of every output is ``classes[k]``.
        mean: ``(D,)`` per-feature mean subtracted before the linear layer.
        scale: ``(D,)`` per-feature standard deviation divided out (1 for constant features).
        coef: ``(1, D)`` for two classes (the logit of ``classes[1]``, as scikit-learn stores it),
            else ``(n_classes, D)``, acting on standardised features.
        intercept: ``(1,)`` or ``(n_classes,)``, matching ``coef``.
        c: the inverse regularisation strength chosen on the validation split.
        val_balanced_accuracy: balanced accuracy of that ``C`` on the validation split, in [0, 1].
    """

    classes: tuple[str, ...]
    mean: FloatArray
    scale: FloatArray
    coef: FloatArray
    intercept: FloatArray
    c: float
    val_balanced_accuracy: float

    def logits(self, embeddings: npt.ArrayLike) -> FloatArray:
        """Class logits ``(N, n_classes)`` of ``(N, D)`` embeddings; for two classes ``[0, z]``.

        Raises:
            AuditDataError: the embeddings are not ``(N, D)`` with the probe's ``D``.
        """
        x = _as_matrix(embeddings, dim=self.mean.shape[0])
        raw = ((x - self.mean) / self.scale) @ self.coef.T + self.intercept
        return np.hstack([np.zeros_like(raw), raw]) if len(self.classes) == 2 else raw

    def predict_proba(self, embeddings: npt.ArrayLike) -> FloatArray:
        """Class probabilities ``(N, n_classes)`` of ``(N, D)`` embeddings; rows sum to 1.

        Raises:
            AuditDataError: as :meth:`logits`.
        """
        logits = self.logits(embeddings)
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        return np.asarray(shifted / shifted.sum(axis=1, keepdims=True), dtype=np.float64)

    def predict(self, embeddings: npt.ArrayLike) -> npt.NDArray[np.str_]:
        """Predicted class names ``(N,)`` of ``(N, D)`` embeddings.

        Raises:
            AuditDataError: as :meth:`logits`.
        """
        names = np.asarray(self.classes, dtype=np.str_)
        return np.asarray(names[self.logits(embeddings).argmax(axis=1)], dtype=np.str_)

    def balanced_accuracy(
        self, embeddings: npt.ArrayLike, labels: Sequence[str] | np.ndarray
    ) -> float:
        """Balanced accuracy (mean recall over the classes present in ``labels``), in [0, 1].

        Args:
            embeddings: ``(N, D)`` embeddings.
            labels: ``(N,)`` true class names.

        Raises:
            AuditDataError: shapes do not match, or ``labels`` is empty.
        """
        y = np.asarray(labels).astype(str)
        x = _as_matrix(embeddings, dim=self.mean.shape[0])
        if y.shape != (x.shape[0],) or y.size == 0:
            raise AuditDataError(
                f"need one label per embedding, got {y.shape} labels for {x.shape[0]} embeddings"
            )
        from sklearn.metrics import balanced_accuracy_score

        return float(balanced_accuracy_score(y, self.predict(x)))

    def as_torch(self) -> LinearProbeModule:
        """The probe as a torch module mapping ``(B, D)`` float embeddings to ``(B, n_classes)``
        logits whose arg-max equals :meth:`predict`; gradients flow to the input."""
        # Folding the standardisation into the layer keeps one matrix product per call.
        weight = self.coef / self.scale
        bias = self.intercept - weight @ self.mean
        if len(self.classes) == 2:
            weight = np.vstack([np.zeros_like(weight), weight])
            bias = np.concatenate([np.zeros_like(bias), bias])
        return LinearProbeModule(weight, bias)


class LinearProbeModule(torch.nn.Module):
    """A fixed linear layer: ``(B, D)`` float embeddings to ``(B, n_classes)`` logits.

    The weights are buffers, not parameters: an attack differentiates with respect to the input
    and an optimiser never changes the probe.
    """

    weight: torch.Tensor
    bias: torch.Tensor

    def __init__(self, weight: FloatArray, bias: FloatArray) -> None:
        super().__init__()
        self.register_buffer("weight", torch.as_tensor(weight, dtype=torch.float32))
        self.register_buffer("bias", torch.as_tensor(bias, dtype=torch.float32))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, n_classes)`` of ``(B, D)`` embeddings."""
        return torch.nn.functional.linear(embeddings, self.weight, self.bias)


def fit_linear_probe(
    embeddings: npt.ArrayLike,
    labels: Sequence[str] | np.ndarray,
    *,
    groups: Sequence[str] | np.ndarray | None = None,
    c_grid: tuple[float, ...] = DEFAULT_C_GRID,
    val_fraction: float = 0.2,
    seed: int = 0,
    max_iter: int = 1000,
) -> LinearProbe:
    """Fit a standardised logistic-regression probe, choosing ``C`` on held-out slides.

    Args:
        embeddings: ``(N, D)`` float embeddings.
        labels: ``(N,)`` class names; at least two classes.
        groups: ``(N,)`` slide (or patient) of each embedding; the validation split never puts
            one slide on both sides. ``None`` splits embeddings, stratified by class.
        c_grid: inverse regularisation strengths to try; ties go to the smaller ``C``.
        val_fraction: share of each class's slides (or embeddings) used to choose ``C``.
        seed: seeds the validation split, so the probe is reproducible.
        max_iter: L-BFGS iterations per fit.

    Returns:
        The probe refitted on all ``N`` embeddings with the chosen ``C``.

    Raises:
        AuditDataError: mismatched shapes, fewer than two classes, an empty or non-positive
            ``c_grid``, ``val_fraction`` outside (0, 1), or too few slides (embeddings) per class
            to hold some out (see :func:`validation_split`).
    """
    x = _as_matrix(embeddings)
    y = _labels(labels, x.shape[0], "labels")
    if len(set(y.tolist())) < 2:
        raise AuditDataError(f"a probe needs at least two classes, got {sorted(set(y.tolist()))}")
    grid = tuple(sorted(float(c) for c in c_grid))
    if not grid or grid[0] <= 0:
        raise AuditDataError(f"c_grid must hold positive values, got {c_grid}; try (0.01, 0.1, 1)")
    train, val = validation_split(y, groups=groups, val_fraction=val_fraction, seed=seed)
    mean = x.mean(axis=0)
    # A constant feature carries no information; dividing by 1 leaves it at 0 instead of NaN.
    scale = np.where(x.std(axis=0) > 0, x.std(axis=0), 1.0)
    z = (x - mean) / scale
    # L-BFGS on a few thousand rows makes many small matrix-vector products, where BLAS threads
    # cost more than they save: on a busy 2-core machine one thread ran 10-15x faster.
    with threadpool_limits(limits=1, user_api="blas"):
        scores = _grid_scores(z[train], y[train], z[val], y[val], grid, max_iter)
        best = int(np.argmax(scores))
        model = _fit(_logistic(grid[best], max_iter), z, y)
    return LinearProbe(
        classes=tuple(str(c) for c in model.classes_),
        mean=mean,
        scale=scale,
        coef=np.asarray(model.coef_, dtype=np.float64),
        intercept=np.asarray(model.intercept_, dtype=np.float64),
        c=grid[best],
        val_balanced_accuracy=scores[best],
    )


def validation_split(
    labels: Sequence[str] | np.ndarray,
    *,
    groups: Sequence[str] | np.ndarray | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> tuple[IntArray, IntArray]:
    """Split items into training and validation indices, every class on both sides.

    With ``groups`` each group (slide) lies wholly on one side: every group is assigned to its
    most frequent class, and ``max(1, round(val_fraction * n))`` of each class's ``n`` groups are
    held out. Without groups the same is done per item.

    Args:
        labels: ``(N,)`` class names.
        groups: ``(N,)`` group (slide) names, or ``None``.
        val_fraction: share held out per class, in (0, 1).
        seed: seeds the choice of held-out groups.

    Returns:
        ``(train, val)``: sorted int64 index arrays into the ``N`` items.

    Raises:
        AuditDataError: ``val_fraction`` outside (0, 1), mismatched shapes, or a class with
            fewer than two groups (items), or one that ends up on one side only.
    """
    y = np.asarray(labels).astype(str)
    if not 0 < val_fraction < 1:
        raise AuditDataError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    g = np.arange(y.size).astype(str) if groups is None else _labels(groups, y.size, "groups")
    unit = "embeddings" if groups is None else "slides"
    names, group_of = np.unique(g, return_inverse=True)
    main_class = _main_class(y, group_of, len(names))
    rng = np.random.default_rng(seed)
    held_out = np.zeros(len(names), dtype=bool)
    for label in np.unique(y):
        members = np.flatnonzero(main_class == label)
        if len(members) < 2:
            raise AuditDataError(
                f"class {label!r} is the main class of {len(members)} {unit}; choosing C on "
                f"held-out {unit} needs at least 2 per class: add data or merge classes"
            )
        count = min(len(members) - 1, max(1, round(val_fraction * len(members))))
        held_out[rng.choice(members, size=count, replace=False)] = True
    val_mask = held_out[group_of]
    for side, mask in (("training", ~val_mask), ("validation", val_mask)):
        missing = sorted(set(y.tolist()) - set(y[mask].tolist()))
        if missing:
            raise AuditDataError(
                f"classes {missing} occur only in {unit} assigned to other classes, so the "
                f"{side} split lacks them; add {unit} where they are the main class"
            )
    return np.flatnonzero(~val_mask), np.flatnonzero(val_mask)


def _main_class(y: npt.NDArray[np.str_], group_of: IntArray, n_groups: int) -> npt.NDArray[np.str_]:
    """Most frequent class of each group (ties to the first class in sorted order)."""
    classes, class_of = np.unique(y, return_inverse=True)
    counts = np.zeros((n_groups, len(classes)), dtype=np.int64)
    np.add.at(counts, (group_of, class_of), 1)
    return np.asarray(classes[counts.argmax(axis=1)], dtype=np.str_)


def _grid_scores(
    x_train: FloatArray,
    y_train: npt.NDArray[np.str_],
    x_val: FloatArray,
    y_val: npt.NDArray[np.str_],
    grid: tuple[float, ...],
    max_iter: int,
) -> list[float]:
    """Validation balanced accuracy for each ``C`` of an ascending grid."""
    from sklearn.metrics import balanced_accuracy_score

    # Warm starts along an ascending grid: each fit begins at the previous, more regularised
    # solution, which cuts the L-BFGS iterations several-fold.
    model = _logistic(grid[0], max_iter, warm_start=True)
    scores = []
    for c in grid:
        _fit(model.set_params(C=c), x_train, y_train)
        scores.append(float(balanced_accuracy_score(y_val, model.predict(x_val))))
    return scores


def _logistic(c: float, max_iter: int, *, warm_start: bool = False) -> LogisticRegression:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(
        C=c, solver="lbfgs", class_weight="balanced", max_iter=max_iter, warm_start=warm_start
    )


def _fit(model: LogisticRegression, x: FloatArray, y: npt.NDArray[np.str_]) -> LogisticRegression:
    # Weakly regularised fits on separable data may stop at max_iter; the arg-max is settled
    # long before the weights are, so the warning is noise for a probe.
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit(x, y)


def _as_matrix(embeddings: npt.ArrayLike, *, dim: int | None = None) -> FloatArray:
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0 or (dim is not None and x.shape[1] != dim):
        expected = "(N, D)" if dim is None else f"(N, {dim})"
        raise AuditDataError(f"embeddings must be a non-empty {expected} array, got {x.shape}")
    if not np.isfinite(x).all():
        raise AuditDataError("embeddings contain NaN or infinity; drop or re-extract those rows")
    return x


def _labels(values: Sequence[str] | np.ndarray, n: int, name: str) -> npt.NDArray[np.str_]:
    y = np.asarray(values).astype(str)
    if y.shape != (n,):
        raise AuditDataError(f"{name} needs one entry per embedding ({n}), got shape {y.shape}")
    return y
