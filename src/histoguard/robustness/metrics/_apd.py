"""Average performance drop (APD): how much a linear probe on the embeddings loses when its
training data confound the biological class with the medical center.

The design follows PathoROB (Kömen et al. 2025, ``pathorob/apd``). The in-distribution (ID)
centers' slides are split, per seed, into held-out test slides and a training pool. From the pool,
training sets are drawn at confounding levels ``s = 0..S``: level 0 takes equally many embeddings
from every (center, class) cell; higher levels move embeddings, in equal steps, from the cells
where a class is rare towards the cells where it is "at home", until at level ``S`` each class
comes (as far as the marginals allow) from its own center only. Every level has the same size,
the same number of embeddings per class and the same number per center, so only the center–class
correlation changes. A linear probe (:mod:`._linear_probe`) is trained at every level and tested
on the held-out ID slides (every cell equally represented) and on out-of-distribution (OOD)
centers never used in training. Per seed,

    APD = mean over s >= 1 of (accuracy_s / accuracy_0) - 1,

separately for ID and OOD, and the reported value is the mean over seeds: 0 means the probe does
not care how its training data were confounded; negative means it learnt the center as a
shortcut and loses accuracy (-0.1 is a 10 % relative drop).

Where this deviates from the reference, and why:

- Home centers: PathoROB hand-assigns each class a center per dataset. Here classes and centers
  are laid out in sorted order on one line and each cell's share at the last level is the overlap
  of their intervals (a north-west-corner transport plan). It is the fully confounded design
  whenever the number of centers divides the number of classes or vice versa (PathoROB's
  Camelyon, TCGA 4x4 and Tolkach layouts), and as confounded as the marginals allow otherwise.
- Quotas in embeddings, not slides: PathoROB's datasets hold the same number of patches per slide,
  so it counts slides. Real slides hold unequal numbers of tiles, so each level here takes a number
  of embeddings per cell, drawn round-robin over the cell's training slides (one from each slide
  in turn). Levels are therefore nested, use the same slides, and each class spans at least two
  slides, so the probe's ``C`` can be validated on unseen slides.
- Validation: PathoROB holds out one extra slide per cell; here the probe chooses ``C`` on a
  slide-grouped split of each training set (same composition; see
  :func:`._linear_probe.validation_split`).
- OOD centers: when ``ood_centers`` is ``None`` and the data hold at least three centers, the
  smallest center (fewest embeddings; ties to the last in sorted order) is held out as OOD. With
  two centers, or ``ood_centers=()``, there is no OOD test and its values are ``None``.
- Confidence interval: a 95 % Student-t interval of the mean over seeds (PathoROB uses the
  t-interval over datasets and seeds). Seeds share data, so it reflects the resampling of splits,
  not of new patients.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from histoguard.errors import AuditDataError, ConfigError
from histoguard.robustness.data._containers import LabelledEmbeddings
from histoguard.robustness.metrics._linear_probe import DEFAULT_C_GRID, fit_linear_probe
from histoguard.robustness.metrics._stats import center_class_association, mean_confidence_interval

IntArray = npt.NDArray[np.int64]

#: Slides every (center, class) cell needs: one held out for testing, two to train and validate.
MIN_SLIDES_PER_CELL = 3


@dataclass(frozen=True, kw_only=True)
class APDConfig:
    """Settings of :func:`average_performance_drop`.

    Attributes:
        n_levels: ``S``, the most confounded level; training sets are built for levels ``0..S``.
        n_seeds: repetitions with different slide splits; the APD is their mean.
        ood_centers: centers kept out of training and used as the OOD test set; ``None`` holds out
            the smallest center when there are at least three, ``()`` none.
        train_fraction: share of each ID cell's slides in the training pool (the rest is the ID
            test set; at least one slide per cell is held out and two are kept for training).
        seed: seeds every split and probe, so the result is reproducible.
        c_grid: inverse regularisation strengths the probe chooses from.
        max_tiles_per_cell: cap on the embeddings per (center, class) cell at level 0, which
            bounds the training-set size (and run time) on large cohorts; ``None`` for no cap.
    """

    n_levels: int = 4
    n_seeds: int = 3
    ood_centers: tuple[str, ...] | None = None
    train_fraction: float = 0.6
    seed: int = 0
    c_grid: tuple[float, ...] = DEFAULT_C_GRID
    max_tiles_per_cell: int | None = 1000

    def __post_init__(self) -> None:
        if self.n_levels < 1 or self.n_seeds < 1:
            raise ConfigError(
                f"n_levels and n_seeds must be >= 1, got {self.n_levels} and {self.n_seeds}"
            )
        if not 0 < self.train_fraction < 1:
            raise ConfigError(f"train_fraction must lie in (0, 1), got {self.train_fraction}")
        if self.max_tiles_per_cell is not None and self.max_tiles_per_cell < self.n_levels:
            raise ConfigError(
                f"max_tiles_per_cell ({self.max_tiles_per_cell}) must be at least n_levels "
                f"({self.n_levels}) so that each level moves at least one embedding per cell"
            )

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON-compatible values."""
        values = asdict(self)
        values["ood_centers"] = None if self.ood_centers is None else list(self.ood_centers)
        values["c_grid"] = list(self.c_grid)
        return values


@dataclass(frozen=True, kw_only=True, eq=False)
class APDSplits:
    """Row indices into the data for one seed of the APD design.

    Attributes:
        train: one int64 index array per level ``0..S``, all of the same length.
        test_id: held-out ID embeddings, slide-disjoint from every training set, with the same
            number of embeddings from every (ID center, class) cell.
        test_ood: every embedding of the OOD centers (empty when there are none).
    """

    train: tuple[IntArray, ...]
    test_id: IntArray
    test_ood: IntArray


@dataclass(frozen=True, kw_only=True)
class APDLevel:
    """Probe accuracies at one confounding level, one entry per seed.

    Attributes:
        level: ``s`` in ``0..S``.
        center_class_correlation: Cramér's V between center and class in the training set, in
            [0, 1] (0 at level 0, 1 when each class comes from its own center only).
        accuracy_id: balanced accuracy on the ID test set, per seed.
        accuracy_ood: balanced accuracy on the OOD test set per seed, or ``None``.
        c: the probe's chosen inverse regularisation strength, per seed.
    """

    level: int
    center_class_correlation: float
    accuracy_id: tuple[float, ...]
    accuracy_ood: tuple[float, ...] | None
    c: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        """Means over seeds, and the per-seed values under ``per_seed``."""
        ood = self.accuracy_ood
        return {
            "level": self.level,
            "center_class_correlation": self.center_class_correlation,
            "accuracy_id": float(np.mean(self.accuracy_id)),
            "accuracy_ood": None if ood is None else float(np.mean(ood)),
            "per_seed": [
                {
                    "seed": i,
                    "accuracy_id": self.accuracy_id[i],
                    "accuracy_ood": None if ood is None else ood[i],
                    "c": self.c[i],
                }
                for i in range(len(self.accuracy_id))
            ],
        }


@dataclass(frozen=True, kw_only=True)
class APDResult:
    """The average performance drop, in distribution and out of distribution.

    Attributes:
        in_distribution: APD on held-out slides of the training centers (0 = no drop,
            negative = relative loss, e.g. -0.1 for 10 %).
        out_of_distribution: APD on the OOD centers, or ``None`` without OOD centers.
        ci_in_distribution, ci_out_of_distribution: 95 % Student-t intervals of the mean over
            seeds, or ``None`` with a single seed (or without OOD centers).
        per_seed_id, per_seed_ood: the APD of each seed.
        levels: accuracies per confounding level.
        id_centers, ood_centers, classes: what was trained on and tested.
        train_size: embeddings in every training set.
        config: the settings used.
    """

    in_distribution: float
    out_of_distribution: float | None
    ci_in_distribution: tuple[float, float] | None
    ci_out_of_distribution: tuple[float, float] | None
    per_seed_id: tuple[float, ...]
    per_seed_ood: tuple[float, ...] | None
    levels: tuple[APDLevel, ...]
    id_centers: tuple[str, ...]
    ood_centers: tuple[str, ...]
    classes: tuple[str, ...]
    train_size: int
    config: APDConfig

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible summary for audit.json."""
        return {
            "in_distribution": self.in_distribution,
            "out_of_distribution": self.out_of_distribution,
            "ci_in_distribution": _list_or_none(self.ci_in_distribution),
            "ci_out_of_distribution": _list_or_none(self.ci_out_of_distribution),
            "ci_method": "95% Student-t interval of the mean over seeds",
            "per_seed_in_distribution": list(self.per_seed_id),
            "per_seed_out_of_distribution": _list_or_none(self.per_seed_ood),
            "splits": [level.to_dict() for level in self.levels],
            "id_centers": list(self.id_centers),
            "ood_centers": list(self.ood_centers),
            "classes": list(self.classes),
            "parameters": {**self.config.to_dict(), "train_size": self.train_size},
        }


def average_performance_drop(
    data: LabelledEmbeddings, config: APDConfig = APDConfig()
) -> APDResult:
    """Average performance drop of a linear probe as training data grow confounded.

    Args:
        data: ``(N, D)`` embeddings with class, center and slide; at least two classes, two ID
            centers, and :data:`MIN_SLIDES_PER_CELL` slides in every (ID center, class) cell.
        config: levels, seeds, OOD centers and probe settings.

    Returns:
        :class:`APDResult`; about ``n_seeds * (n_levels + 1)`` probe fits, each on
        ``n_classes * n_id_centers * min(cell size, max_tiles_per_cell)`` embeddings at most.

    Raises:
        AuditDataError: see :func:`build_apd_splits`.
    """
    id_centers, ood_centers = resolve_centers(data, config.ood_centers)
    seed_splits = build_apd_splits(data, config)
    probe_seeds = np.random.SeedSequence(config.seed).generate_state(config.n_seeds)
    # (levels, seeds) each: ID accuracy, OOD accuracy (NaN without OOD centers), chosen C.
    acc_id, acc_ood, chosen_c = np.stack(
        [
            _probe_levels(data, splits, config.c_grid, int(seed))
            for splits, seed in zip(seed_splits, probe_seeds, strict=True)
        ],
        axis=2,
    )
    drop_id = _drop_per_seed(acc_id)
    drop_ood = _drop_per_seed(acc_ood) if ood_centers else None
    train_sets = seed_splits[0].train
    levels = tuple(
        APDLevel(
            level=s,
            center_class_correlation=center_class_association(
                data.label[train], data.center[train]
            ),
            accuracy_id=tuple(acc_id[s].tolist()),
            accuracy_ood=tuple(acc_ood[s].tolist()) if ood_centers else None,
            c=tuple(chosen_c[s].tolist()),
        )
        for s, train in enumerate(train_sets)
    )
    return APDResult(
        in_distribution=float(drop_id.mean()),
        out_of_distribution=None if drop_ood is None else float(drop_ood.mean()),
        ci_in_distribution=mean_confidence_interval(drop_id),
        ci_out_of_distribution=None if drop_ood is None else mean_confidence_interval(drop_ood),
        per_seed_id=tuple(drop_id.tolist()),
        per_seed_ood=None if drop_ood is None else tuple(drop_ood.tolist()),
        levels=levels,
        id_centers=id_centers,
        ood_centers=ood_centers,
        classes=data.classes,
        train_size=int(train_sets[0].size),
        config=config,
    )


def build_apd_splits(
    data: LabelledEmbeddings, config: APDConfig = APDConfig()
) -> tuple[APDSplits, ...]:
    """The training and test index sets of every seed (see the module docstring for the design).

    Every level of every seed trains on the same number of embeddings, with the same counts per
    class and per center; level 0 is balanced and the last level fully confounded.

    Args:
        data: embeddings with class, center and slide.
        config: levels, seeds, OOD centers, ``train_fraction`` and ``max_tiles_per_cell``.

    Returns:
        One :class:`APDSplits` per seed.

    Raises:
        AuditDataError: fewer than two classes or two ID centers; unknown OOD centers; a slide
            under two centers; an (ID center, class) cell with fewer than
            :data:`MIN_SLIDES_PER_CELL` slides, or too few training embeddings for ``n_levels``.
    """
    id_centers, ood_centers = resolve_centers(data, config.ood_centers)
    _check_slides(data, id_centers, ood_centers)
    cells = _cell_rows(data, id_centers)
    home = home_shares(len(data.classes), len(id_centers))
    rngs = [
        np.random.default_rng(s) for s in np.random.SeedSequence(config.seed).spawn(config.n_seeds)
    ]
    pools = [_split_slides(data, cells, config.train_fraction, rng) for rng in rngs]
    unit = _tiles_per_cell(pools, home, id_centers, data.classes, config)
    ood_rows = np.flatnonzero(np.isin(data.center, ood_centers)).astype(np.int64)
    out = []
    for (train_pool, test_pool), rng in zip(pools, rngs, strict=True):
        train = tuple(
            np.concatenate(
                [pool[:quota] for pool, quota in zip(train_pool, level_quota.ravel(), strict=True)]
            )
            for level_quota in level_quotas(home, unit, config.n_levels)
        )
        out.append(APDSplits(train=train, test_id=_balanced(test_pool, rng), test_ood=ood_rows))
    return tuple(out)


def resolve_centers(
    data: LabelledEmbeddings, ood_centers: tuple[str, ...] | None
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The (ID, OOD) centers, both sorted: ``ood_centers`` as given, or for ``None`` the
    smallest center when there are at least three (see the module docstring).

    Raises:
        AuditDataError: fewer than two classes, an OOD center absent from the data, or fewer
            than two ID centers left.
    """
    if len(data.classes) < 2:
        raise AuditDataError(f"APD needs at least two classes, got {list(data.classes)}")
    centers = data.centers
    if ood_centers is None:
        ood: tuple[str, ...] = ()
        if len(centers) >= 3:
            sizes = [(int((data.center == c).sum()), -i) for i, c in enumerate(centers)]
            ood = (centers[-min(sizes)[1]],)
    else:
        unknown = sorted(set(ood_centers) - set(centers))
        if unknown:
            raise AuditDataError(f"OOD centers {unknown} are not in the data (centers: {centers})")
        ood = tuple(sorted(set(ood_centers)))
    id_centers = tuple(c for c in centers if c not in ood)
    if len(id_centers) < 2:
        raise AuditDataError(
            f"APD needs at least two in-distribution centers to confound with the class, got "
            f"{list(id_centers)} (OOD: {list(ood)}); add a center or hold out fewer"
        )
    return id_centers, ood


def home_shares(n_classes: int, n_centers: int) -> IntArray:
    """``(n_centers, n_classes)`` embeddings per cell at full confounding, per unit of the
    level-0 cell size: classes and centers as consecutive intervals of one line, each cell the
    overlap of its center's and its class's interval. Every row sums to ``n_classes`` and every
    column to ``n_centers``, as in the balanced design."""
    center_edges = np.arange(n_centers + 1) * n_classes
    class_edges = np.arange(n_classes + 1) * n_centers
    low = np.maximum.outer(center_edges[:-1], class_edges[:-1])
    high = np.minimum.outer(center_edges[1:], class_edges[1:])
    return np.asarray(np.clip(high - low, 0, None), dtype=np.int64)


def level_quotas(home: IntArray, unit: int, n_levels: int) -> list[IntArray]:
    """``(n_centers, n_classes)`` embeddings per cell at each level ``0..n_levels``.

    Level ``s`` moves ``s / n_levels`` of the way from ``unit`` per cell to ``home * unit``;
    ``unit`` must be a multiple of ``n_levels`` so that every quota is an integer and the
    marginals stay exactly equal.
    """
    step = unit // n_levels
    return [unit + s * step * (home - 1) for s in range(n_levels + 1)]


def _probe_levels(
    data: LabelledEmbeddings, splits: APDSplits, c_grid: tuple[float, ...], seed: int
) -> npt.NDArray[np.float64]:
    """``(3, levels)``: ID balanced accuracy, OOD balanced accuracy (NaN without OOD data) and
    chosen ``C`` of a probe trained at each level of one seed."""
    out = np.full((3, len(splits.train)), np.nan)
    for level, train in enumerate(splits.train):
        probe = fit_linear_probe(
            data.embeddings[train],
            data.label[train],
            groups=data.slide_id[train],
            c_grid=c_grid,
            seed=seed,
        )
        out[0, level] = probe.balanced_accuracy(
            data.embeddings[splits.test_id], data.label[splits.test_id]
        )
        if splits.test_ood.size:
            out[1, level] = probe.balanced_accuracy(
                data.embeddings[splits.test_ood], data.label[splits.test_ood]
            )
        out[2, level] = probe.c
    return out


def _drop_per_seed(accuracy: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """``(levels, seeds)`` accuracies to the ``(seeds,)`` APD: mean relative change vs level 0."""
    return np.asarray((accuracy[1:] / accuracy[0]).mean(axis=0) - 1, dtype=np.float64)


def _check_slides(
    data: LabelledEmbeddings, id_centers: tuple[str, ...], ood_centers: tuple[str, ...]
) -> None:
    used = np.isin(data.center, id_centers + ood_centers)
    pairs = set(zip(data.slide_id[used].tolist(), data.center[used].tolist(), strict=True))
    shared = sorted(slide for slide, n in Counter(s for s, _ in pairs).items() if n > 1)
    if shared:
        raise AuditDataError(
            f"slides {shared[:5]} occur under more than one center; slide ids must be unique "
            "per center (prefix them with the center name)"
        )


def _cell_rows(data: LabelledEmbeddings, id_centers: tuple[str, ...]) -> list[IntArray]:
    """Row indices of each (ID center, class) cell, centers outer, classes inner."""
    cells = []
    for center in id_centers:
        for label in data.classes:
            rows = np.flatnonzero((data.center == center) & (data.label == label))
            n_slides = len(set(data.slide_id[rows].tolist()))
            if n_slides < MIN_SLIDES_PER_CELL:
                raise AuditDataError(
                    f"center {center!r}, class {label!r} has {n_slides} slides; APD needs at "
                    f"least {MIN_SLIDES_PER_CELL} per (center, class) (1 to test, 2 to train "
                    "and validate): add slides, or make it an OOD center"
                )
            cells.append(rows.astype(np.int64))
    return cells


def _split_slides(
    data: LabelledEmbeddings,
    cells: list[IntArray],
    train_fraction: float,
    rng: np.random.Generator,
) -> tuple[list[IntArray], list[IntArray]]:
    """Per cell, (training pool in round-robin slide order, test rows); slides whole.

    A slide in several cells (a specimen with two classes) goes to one side for all of them:
    slides are visited in random order and go to test while any of their cells still lacks test
    slides.
    """
    slides_of = [data.slide_id[rows] for rows in cells]
    targets = [max(1, round((1 - train_fraction) * len(set(s.tolist())))) for s in slides_of]
    cells_of: dict[str, list[int]] = {}
    for k, slides in enumerate(slides_of):
        for slide in set(slides.tolist()):
            cells_of.setdefault(slide, []).append(k)
    counts = [0] * len(cells)
    test_slides: set[str] = set()
    for slide in rng.permutation(sorted(cells_of)).tolist():
        member = cells_of[slide]
        if any(counts[k] < targets[k] for k in member):
            test_slides.add(slide)
            for k in member:
                counts[k] += 1
    train_pool, test_pool = [], []
    for rows, slides in zip(cells, slides_of, strict=True):
        is_test = np.isin(slides, list(test_slides))
        if len(set(slides[~is_test].tolist())) < 2:
            raise AuditDataError(
                f"center {str(data.center[rows[0]])!r}, class {str(data.label[rows[0]])!r} keeps "
                "fewer than 2 training slides after holding out test slides (slides shared with "
                "other classes); add slides or raise train_fraction"
            )
        train_pool.append(_round_robin(rows[~is_test], slides[~is_test], rng))
        test_pool.append(rows[is_test])
    return train_pool, test_pool


def _round_robin(
    rows: IntArray, slides: npt.NDArray[np.str_], rng: np.random.Generator
) -> IntArray:
    """``rows`` shuffled so that any prefix draws from the slides in turn: one embedding from
    each slide (in a random slide order), then a second from each, and so on."""
    shuffle = rng.permutation(rows.size)
    rows, slides = rows[shuffle], slides[shuffle]
    _, slide_index = np.unique(slides, return_inverse=True)
    slide_order = rng.permutation(slide_index.max() + 1)[slide_index]
    by_slide = np.argsort(slide_index, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(slide_index[by_slide]) != 0])
    sizes = np.diff(np.r_[starts, rows.size])
    rank = np.empty(rows.size, dtype=np.int64)
    rank[by_slide] = np.arange(rows.size) - np.repeat(starts, sizes)
    return rows[np.lexsort((slide_order, rank))]


def _tiles_per_cell(
    pools: list[tuple[list[IntArray], list[IntArray]]],
    home: IntArray,
    id_centers: tuple[str, ...],
    classes: tuple[str, ...],
    config: APDConfig,
) -> int:
    """The level-0 embeddings per cell: the most that every seed's training pools can supply at
    every level, rounded down to a multiple of ``n_levels``."""
    # Each cell's quota moves monotonically between 1 and home[cell] units, so its peak is at an
    # end point.
    peak = np.maximum(home, 1).ravel()
    available = np.min([[pool.size for pool in train] for train, _ in pools], axis=0)
    unit = int((available // peak).min())
    if config.max_tiles_per_cell is not None:
        unit = min(unit, config.max_tiles_per_cell)
    unit -= unit % config.n_levels
    if unit == 0:
        worst = int(np.argmin(available // peak))
        center, label = id_centers[worst // len(classes)], classes[worst % len(classes)]
        raise AuditDataError(
            f"center {center!r}, class {label!r} has {int(available[worst])} training "
            "embeddings; the most confounded level needs at least "
            f"{int(peak[worst]) * config.n_levels} there: add data or lower n_levels"
        )
    return unit


def _balanced(test_pool: list[IntArray], rng: np.random.Generator) -> IntArray:
    """An equal number of test rows from every cell (the smallest cell's count)."""
    size = min(rows.size for rows in test_pool)
    return np.sort(
        np.concatenate([rng.choice(rows, size=size, replace=False) for rows in test_pool])
    )


def _list_or_none(values: tuple[float, ...] | None) -> list[float] | None:
    return None if values is None else list(values)
