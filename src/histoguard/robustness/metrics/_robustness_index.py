"""The PathoROB robustness index: do an encoder's nearest neighbours share the biology or the
hospital?

For every embedding (the query) its ``k`` nearest neighbours are found, never from the query's
own slide. Each neighbour falls in one of four kinds relative to the query:

====  ===========================  ====================================
SS    same class, same center      uninformative: both agree
SO    same class, other center     biology wins over the center
OS    other class, same center     the center wins over biology
OO    other class, other center    uninformative: neither agrees
====  ===========================  ====================================

``RI(k) = ΣSO / (ΣSO + ΣOS)`` over all queries and neighbour ranks up to ``k``: 1 when
neighbours cross centers but keep the class, 0 when they keep the center but cross classes,
above 0.5 when biology dominates (Kömen et al., PathoROB, 2025).

``k`` is either the user's, or the one that maximises the balanced accuracy of majority-vote
kNN classification of the biological class under the same exclusions (the encoder's own best
neighbourhood size). The confidence interval resamples *slides*, not tiles: tiles of one slide
are correlated, and a tile bootstrap would be far too narrow.

The paired design repeats the count in balanced subsets, one per pair of classes x pair of
centers with equal items in all four cells, so that unequal class mixes across centers cannot
move the index.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from histoguard.errors import AuditDataError, ConfigError
from histoguard.robustness.data._containers import LabelledEmbeddings
from histoguard.robustness.metrics._neighbours import nearest_neighbours
from histoguard.robustness.metrics._stats import balanced_cells, two_by_two_subsets

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
KSelection = Literal["user", "knn_balanced_accuracy"]

#: Neighbour kinds, in the order of the rows of every counts array.
KINDS = ("SS", "SO", "OS", "OO")
_SO, _OS = KINDS.index("SO"), KINDS.index("OS")
#: Marks a padded neighbour place in a kinds array.
_NO_NEIGHBOUR = -1


@dataclass(frozen=True, kw_only=True)
class RobustnessIndexConfig:
    """Settings of :func:`robustness_index`.

    Attributes:
        k: neighbours per query for the reported index; None chooses the k with the best
            kNN balanced accuracy of the biological class.
        max_k: longest neighbour list: the end of the RI(k) curve and of the k candidates.
            Clamped (and the clamp recorded) when the data leave fewer eligible neighbours.
        n_bootstrap: slide-bootstrap resamples for the confidence interval.
        confidence: coverage of the percentile confidence interval, in (0, 1).
        paired: also run the paired (balanced 2 classes x 2 centers) design.
        max_items_per_cell: at most this many items per (class, center) cell of each paired
            subset (None: as many as the smallest of its four cells holds).
        seed: seeds the paired subsampling and the bootstrap.
        memory_mb: memory budget in MiB of one block of the neighbour search.

    Raises:
        ValueError: a setting is out of range (the message names it).
    """

    k: int | None = None
    max_k: int = 100
    n_bootstrap: int = 1000
    confidence: float = 0.95
    paired: bool = True
    max_items_per_cell: int | None = None
    seed: int = 0
    memory_mb: int = 512

    def __post_init__(self) -> None:
        if self.max_k < 1:
            raise ConfigError(f"max_k must be at least 1, got {self.max_k}")
        if self.k is not None and not 1 <= self.k <= self.max_k:
            raise ConfigError(f"k must be in [1, max_k={self.max_k}], got {self.k}; or None")
        if self.n_bootstrap < 1:
            raise ConfigError(f"n_bootstrap must be at least 1, got {self.n_bootstrap}")
        if not 0 < self.confidence < 1:
            raise ConfigError(f"confidence must be in (0, 1), got {self.confidence}")
        if self.max_items_per_cell is not None and self.max_items_per_cell < 1:
            raise ConfigError(
                f"max_items_per_cell must be >= 1 or None, got {self.max_items_per_cell}"
            )
        if self.memory_mb < 1:
            raise ConfigError(f"memory_mb must be at least 1, got {self.memory_mb}")


@dataclass(frozen=True, kw_only=True, eq=False)
class NeighbourCounts:
    """Neighbour kinds counted cumulatively over ranks, and the index they give.

    Attributes:
        cumulative: ``(4, max_k)`` int64; row order :data:`KINDS`; column ``k - 1`` counts the
            neighbours of rank <= k over all queries.
        value: RI at the evaluated k.
        ci: percentile slide-bootstrap interval of ``value``.
    """

    cumulative: IntArray
    value: float
    ci: tuple[float, float]

    @property
    def ri_curve(self) -> FloatArray:
        """``(max_k,)`` RI(k) for k = 1..max_k; NaN where no SO or OS neighbour is counted yet."""
        so, os_ = self.cumulative[_SO].astype(float), self.cumulative[_OS].astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.asarray(so / (so + os_))

    @property
    def composition(self) -> FloatArray:
        """``(4, max_k)`` share of each kind among neighbours of rank <= k (columns sum to 1)."""
        return np.asarray(self.cumulative / self.cumulative.sum(axis=0, keepdims=True))

    def counts_at(self, k: int) -> dict[str, int]:
        """Neighbours of each kind over all queries and ranks <= ``k``."""
        return {kind: int(n) for kind, n in zip(KINDS, self.cumulative[:, k - 1], strict=True)}

    def curves_dict(self) -> dict[str, Any]:
        """The RI(k) curve and the composition as JSON-compatible lists."""
        ks = list(range(1, self.cumulative.shape[1] + 1))
        composition = {
            kind: _floats(row) for kind, row in zip(KINDS, self.composition, strict=True)
        }
        return {
            "curve": {"k": ks, "ri": _floats(self.ri_curve)},
            "composition": {"k": ks, **composition},
        }


@dataclass(frozen=True, kw_only=True, eq=False)
class PairedRobustnessIndex:
    """The paired design's index, or why it could not be computed.

    Attributes:
        counts: pooled counts over all balanced subsets (None when not computed).
        n_subsets: balanced (2 classes x 2 centers) subsets found.
        items_per_cell: items taken from each cell, per subset.
        reason: why ``counts`` is None.
    """

    counts: NeighbourCounts | None
    n_subsets: int
    items_per_cell: tuple[int, ...] = ()
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """``{"value", "ci", "n_subsets", "items_per_cell", "max_k", "counts", "curve",
        "composition"}``, or ``{"value": None, "reason", "n_subsets"}``."""
        if self.counts is None:
            return {"value": None, "reason": self.reason, "n_subsets": self.n_subsets}
        max_k = self.counts.cumulative.shape[1]
        return {
            "value": self.counts.value,
            "ci": list(self.counts.ci),
            "n_subsets": self.n_subsets,
            "items_per_cell": list(self.items_per_cell),
            "max_k": max_k,
            **self.counts.curves_dict(),
        }


@dataclass(frozen=True, kw_only=True, eq=False)
class RobustnessIndexResult:
    """Everything :func:`robustness_index` measured; ``to_dict()`` is its ``audit.json`` entry.

    Attributes:
        value: RI at ``k``, in [0, 1].
        k: neighbours per query used for ``value``.
        k_selection: who chose ``k``.
        counts: cumulative neighbour kinds for k = 1..max_k, with the value and interval.
        knn_k, knn_balanced_accuracy: kNN balanced accuracy of the biological class per
            candidate k (the table ``k`` is chosen from).
        paired: the paired design (or why it was skipped); None when not requested.
        n_queries, n_slides: embeddings and slides analysed.
        max_k: longest neighbour list actually used.
        max_k_note: why ``max_k`` differs from the configured one, or None.
        config: the settings used.
    """

    value: float
    k: int
    k_selection: KSelection
    counts: NeighbourCounts
    knn_k: tuple[int, ...]
    knn_balanced_accuracy: tuple[float, ...]
    paired: PairedRobustnessIndex | None
    n_queries: int
    n_slides: int
    max_k: int
    max_k_note: str | None
    config: RobustnessIndexConfig

    @property
    def ci(self) -> tuple[float, float]:
        """Percentile slide-bootstrap interval of ``value``."""
        return self.counts.ci

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible summary: value, k, ci, curves, composition, kNN table, counts at k,
        paired design, sizes and parameters (NaN written as None)."""
        return {
            "value": self.value,
            "k": self.k,
            "k_selection": self.k_selection,
            "ci": list(self.ci),
            "confidence": self.config.confidence,
            **self.counts.curves_dict(),
            "knn_balanced_accuracy": {
                "k": list(self.knn_k),
                "balanced_accuracy": _floats(np.asarray(self.knn_balanced_accuracy)),
            },
            "counts": self.counts.counts_at(self.k),
            "paired": None if self.paired is None else self.paired.to_dict(),
            "n_queries": self.n_queries,
            "n_slides": self.n_slides,
            "max_k": self.max_k,
            "max_k_note": self.max_k_note,
            "parameters": asdict(self.config),
        }


def robustness_index(
    data: LabelledEmbeddings, config: RobustnessIndexConfig = RobustnessIndexConfig()
) -> RobustnessIndexResult:
    """The PathoROB robustness index of labelled embeddings, with its curve, kNN table,
    slide-bootstrap interval and the paired design.

    Args:
        data: ``(N, D)`` embeddings with class, center and slide of each; at least two classes
            and two centers, one class seen at two centers and one center seeing two classes.
        config: settings; see :class:`RobustnessIndexConfig`.

    When ``config.k`` is None, k is the candidate with the best kNN balanced accuracy among
    those where the index is defined (some SO or OS neighbour within k): two perfectly separable
    signals can leave only SS neighbours at small k.

    Returns:
        :class:`RobustnessIndexResult`.

    Raises:
        AuditDataError: fewer than two classes or centers; a layout in which SO or OS
            neighbours cannot exist (class and center fully confounded); a single slide
            holding all data; the user's ``k`` larger than the data allow; no SO or OS
            neighbour within ``k`` (RI undefined).
    """
    _check_layout(data)
    label = _codes(data.label)
    center = _codes(data.center)
    slide = _codes(data.slide_id)
    max_k, max_k_note = _usable_max_k(slide, config.max_k)
    if config.k is not None and config.k > max_k:
        raise AuditDataError(
            f"k={config.k} but excluding each query's own slide leaves only {max_k} neighbours "
            "for some queries; choose a smaller k"
        )
    indices, _ = nearest_neighbours(
        data.embeddings, max_k, groups=slide, memory_mb=config.memory_mb
    )
    knn_k = _k_candidates(max_k)
    balanced_accuracy = _knn_balanced_accuracy(label, indices, knn_k)
    kinds = _kinds(label, center, indices)
    cumulative = _cumulative(kinds)
    k, selection = _choose_k(config.k, knn_k, balanced_accuracy, cumulative)
    counts = _count(kinds, cumulative, slide, k, config)
    paired = (
        _paired_design(data.embeddings, label, center, slide, k, max_k, config, indices)
        if config.paired
        else None
    )
    return RobustnessIndexResult(
        value=counts.value,
        k=k,
        k_selection=selection,
        counts=counts,
        knn_k=knn_k,
        knn_balanced_accuracy=tuple(float(a) for a in balanced_accuracy),
        paired=paired,
        n_queries=len(data),
        n_slides=int(slide.max()) + 1,
        max_k=max_k,
        max_k_note=max_k_note,
        config=config,
    )


# --- input checks ---------------------------------------------------------------------------


def _check_layout(data: LabelledEmbeddings) -> None:
    """Raise unless SO and OS neighbours can both exist."""
    if len(data.classes) < 2:
        raise AuditDataError(
            f"the robustness index needs at least 2 biological classes, found {data.classes}; "
            "add embeddings of another class"
        )
    if len(data.centers) < 2:
        raise AuditDataError(
            f"the robustness index needs at least 2 centers, found {data.centers}; add "
            "embeddings from another center"
        )
    pairs = set(zip(data.label.tolist(), data.center.tolist(), strict=True))
    centers_per_class = {c: {m for cls, m in pairs if cls == c} for c in data.classes}
    classes_per_center = {m: {c for c, ctr in pairs if ctr == m} for m in data.centers}
    if all(len(m) < 2 for m in centers_per_class.values()):
        raise AuditDataError(
            "no class occurs at two centers, so class and center are fully confounded and the "
            f"index is undefined (centers per class: {_layout(centers_per_class)}); add a class "
            "seen at more than one center"
        )
    if all(len(c) < 2 for c in classes_per_center.values()):
        raise AuditDataError(
            "no center holds two classes, so 'other class, same center' neighbours cannot exist "
            f"and the index is undefined (classes per center: {_layout(classes_per_center)}); "
            "add a center with more than one class"
        )


def _layout(groups: dict[str, set[str]]) -> str:
    return "; ".join(f"{key}: {', '.join(sorted(values))}" for key, values in groups.items())


def _codes(values: np.ndarray) -> IntArray:
    """Integer code (index into the sorted unique values) of each entry."""
    return np.unique(values, return_inverse=True)[1].reshape(len(values)).astype(np.int64)


def _usable_max_k(slide: IntArray, requested: int) -> tuple[int, str | None]:
    """The longest neighbour list every query can fill once its own slide is excluded."""
    largest_slide = int(np.bincount(slide).max())
    available = len(slide) - largest_slide
    if available < 1:
        raise AuditDataError(
            "all embeddings come from one slide, so no query has a neighbour from another "
            "slide; add embeddings from other slides"
        )
    if requested <= available:
        return requested, None
    return available, (
        f"max_k clamped from {requested} to {available}: the largest slide holds "
        f"{largest_slide} of {len(slide)} embeddings, and a query's own slide is excluded"
    )


# --- k selection ----------------------------------------------------------------------------


def _k_candidates(max_k: int) -> tuple[int, ...]:
    """PathoROB's candidate k: 1, 3, 5, 7, 9, then every 10th (11, 21, ...) up to max_k."""
    return tuple(k for k in (1, 3, 5, 7, 9, *range(11, max_k + 1, 10)) if k <= max_k)


def _knn_balanced_accuracy(label: IntArray, indices: IntArray, ks: tuple[int, ...]) -> FloatArray:
    """Balanced accuracy of majority-vote kNN prediction of ``label`` for each k in ``ks``.

    A tied vote goes to the tied class whose first vote came from the nearest neighbour, not to
    the class with the smallest code, which would bias small-k predictions towards it.

    Args:
        label: ``(N,)`` class code of each query.
        indices: ``(N, K)`` neighbour rows (no padding), K >= max(ks).
        ks: neighbourhood sizes to evaluate.
    """
    n, n_ranks = indices.shape
    n_classes = int(label.max()) + 1
    rows = np.arange(n)
    votes = np.zeros((n, n_classes), dtype=np.int64)
    first_rank = np.full((n, n_classes), n_ranks, dtype=np.int64)
    accuracies = np.empty(len(ks))
    wanted = {k: i for i, k in enumerate(ks)}
    for rank in range(max(ks)):
        voted = label[indices[:, rank]]
        votes[rows, voted] += 1
        first_rank[rows, voted] = np.minimum(first_rank[rows, voted], rank)
        if rank + 1 in wanted:
            predicted = np.argmax(votes * (n_ranks + 1) + (n_ranks - first_rank), axis=1)
            recalls = [np.mean(predicted[label == c] == c) for c in range(n_classes)]
            accuracies[wanted[rank + 1]] = np.mean(recalls)
    return accuracies


def _choose_k(
    user_k: int | None, ks: tuple[int, ...], accuracy: FloatArray, cumulative: IntArray
) -> tuple[int, KSelection]:
    """The user's k, else the candidate with the best kNN balanced accuracy (the smallest on a
    tie) among those where the index is defined (some SO or OS neighbour within k).

    Raises:
        AuditDataError: no candidate k has an SO or OS neighbour.
    """
    if user_k is not None:
        return user_k, "user"
    decisive = cumulative[_SO] + cumulative[_OS]
    defined = np.flatnonzero([decisive[k - 1] > 0 for k in ks])
    if not len(defined):
        raise AuditDataError(
            f"no neighbour up to rank {ks[-1]} shares exactly one of class and center with its "
            "query (all are SS or OO), so the index is undefined; raise max_k"
        )
    return ks[defined[int(np.argmax(accuracy[defined]))]], "knn_balanced_accuracy"


# --- counting -------------------------------------------------------------------------------


def _kinds(label: IntArray, center: IntArray, indices: IntArray) -> npt.NDArray[np.int8]:
    """``(N, K)`` kind of each neighbour (index into :data:`KINDS`; -1 for padding)."""
    padded = indices < 0
    neighbour = np.where(padded, 0, indices)
    other_class = label[neighbour] != label[:, None]
    other_center = center[neighbour] != center[:, None]
    kinds: npt.NDArray[np.int8] = (2 * other_class + other_center).astype(np.int8)
    kinds[padded] = _NO_NEIGHBOUR
    return kinds


def _cumulative(kinds: npt.NDArray[np.int8]) -> IntArray:
    """``(4, K)`` neighbours of each kind with rank <= k, summed over queries, for k = 1..K."""
    per_rank = np.stack([(kinds == i).sum(axis=0) for i in range(len(KINDS))])
    return np.cumsum(per_rank, axis=1).astype(np.int64)


def _count(
    kinds: npt.NDArray[np.int8],
    cumulative: IntArray,
    slide: IntArray,
    k: int,
    config: RobustnessIndexConfig,
) -> NeighbourCounts:
    """RI at ``k`` and its slide-bootstrap interval.

    Args:
        kinds: ``(Q, K)`` from :func:`_kinds` (queries of all subsets stacked).
        cumulative: ``(4, K)`` from :func:`_cumulative` of ``kinds``.
        slide: ``(Q,)`` slide code of each query.

    Raises:
        AuditDataError: no SO or OS neighbour within ``k``.
    """
    so, os_ = cumulative[_SO, k - 1], cumulative[_OS, k - 1]
    if so + os_ == 0:
        raise AuditDataError(
            f"no neighbour within k={k} shares exactly one of class and center with its query "
            "(all are SS or OO), so the index is undefined; choose a larger k"
        )
    ci = _slide_bootstrap(kinds[:, :k], slide, config)
    return NeighbourCounts(cumulative=cumulative, value=float(so / (so + os_)), ci=ci)


def _slide_bootstrap(
    kinds: npt.NDArray[np.int8], slide: IntArray, config: RobustnessIndexConfig
) -> tuple[float, float]:
    """Percentile interval of RI when whole slides are resampled with replacement.

    Counts are summed per slide once; each resample is then a vector of how often every slide
    is drawn, so all resamples are one matrix product.
    """
    n_slides = int(slide.max()) + 1
    so = np.bincount(slide, weights=(kinds == _SO).sum(axis=1), minlength=n_slides)
    os_ = np.bincount(slide, weights=(kinds == _OS).sum(axis=1), minlength=n_slides)
    present = np.flatnonzero(np.bincount(slide, minlength=n_slides))
    rng = np.random.default_rng(config.seed)
    draws = rng.multinomial(
        len(present), np.full(len(present), 1 / len(present)), size=config.n_bootstrap
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        ri = (draws @ so[present]) / (draws @ (so[present] + os_[present]))
    tail = (1 - config.confidence) / 2
    low, high = np.nanquantile(ri, [tail, 1 - tail])
    return float(low), float(high)


# --- paired design --------------------------------------------------------------------------


def _paired_design(
    embeddings: npt.NDArray[np.float32],
    label: IntArray,
    center: IntArray,
    slide: IntArray,
    k: int,
    max_k: int,
    config: RobustnessIndexConfig,
    all_indices: IntArray,
) -> PairedRobustnessIndex:
    """RI pooled over balanced 2 classes x 2 centers subsets, neighbours searched per subset.

    ``all_indices`` (the full search) is reused when a subset is the whole data set.
    """
    subsets, per_cell = _balanced_subsets(label, center, config)
    if not subsets:
        return PairedRobustnessIndex(
            counts=None,
            n_subsets=0,
            reason="no pair of classes is present at the same pair of centers (no 2 x 2 "
            "class-by-center subset has data in all four cells)",
        )
    paired_max_k = min(max_k, *(_usable_max_k(slide[rows], max_k)[0] for rows in subsets))
    if k > paired_max_k:
        return PairedRobustnessIndex(
            counts=None,
            n_subsets=len(subsets),
            items_per_cell=per_cell,
            reason=f"k={k} exceeds the {paired_max_k} neighbours the smallest balanced subset "
            "leaves after excluding each query's slide; raise max_items_per_cell or lower k",
        )
    kinds, query_slide = [], []
    for rows in subsets:
        if len(rows) == len(label):
            indices = all_indices[:, :paired_max_k]
        else:
            indices, _ = nearest_neighbours(
                embeddings[rows], paired_max_k, groups=slide[rows], memory_mb=config.memory_mb
            )
        kinds.append(_kinds(label[rows], center[rows], indices))
        query_slide.append(slide[rows])
    pooled = np.concatenate(kinds)
    counts = _count(pooled, _cumulative(pooled), np.concatenate(query_slide), k, config)
    return PairedRobustnessIndex(counts=counts, n_subsets=len(subsets), items_per_cell=per_cell)


def _balanced_subsets(
    label: IntArray, center: IntArray, config: RobustnessIndexConfig
) -> tuple[list[IntArray], tuple[int, ...]]:
    """Sorted row indices of each balanced subset, and the items drawn per cell for each.

    For every pair of classes x pair of centers whose four cells all hold data, each cell is
    subsampled (seeded, without replacement) to the size of the smallest, capped by
    ``config.max_items_per_cell``.
    """
    rng = np.random.default_rng(config.seed)
    subsets, per_cell = [], []
    for classes, centers in two_by_two_subsets(label, center):
        rows = balanced_cells(label, center, classes, centers, config.max_items_per_cell, rng)
        subsets.append(np.sort(rows))
        per_cell.append(len(rows) // 4)
    return subsets, tuple(per_cell)


def _floats(values: np.ndarray) -> list[float | None]:
    """JSON-compatible floats: NaN becomes None."""
    return [None if np.isnan(v) else float(v) for v in values.tolist()]
