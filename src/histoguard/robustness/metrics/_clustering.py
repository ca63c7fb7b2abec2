"""Clustering score: do unsupervised clusters of the embeddings follow biology or the center?

The definition follows PathoROB (``pathorob/clustering_score``): for every choice of two classes
and two centers whose four (class, center) cells all hold data, the embeddings are L2-normalised
(so that K-means approximates clustering by cosine distance), clustered by K-means with the
number of clusters K in ``[k_min, k_max]`` that maximises the cosine silhouette score, and
scored as

    score = ARI(clusters, class) - ARI(clusters, center),

with ARI the adjusted Rand index. The score is +1 when the clusters are exactly the classes, -1
when they are exactly the centers, and about 0 when both or neither show (an ARI can dip a little
below 0 by chance, so the bounds can be passed by a hair).

Where this differs from the reference, and why:

- Every subset is balanced by subsampling each cell to the smallest one (capped by
  ``max_items_per_cell``), so that a large center cannot dominate the clusters by its size alone.
- K is chosen per subset and per repeat; each repeat draws its own subsample and K-means seed.
  (The reference chooses K once and then repeats only the K-means initialisation.)
- Silhouette scores use at most :data:`SILHOUETTE_SAMPLE` items per subset, for speed.
- The summary adds a 95 % Student-t interval of the mean over all subset x repeat scores; repeats
  share data, so it reflects subsampling and clustering variability, not new patients.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from threadpoolctl import threadpool_limits

from histoguard.errors import AuditDataError, ConfigError
from histoguard.robustness.data._containers import LabelledEmbeddings
from histoguard.robustness.metrics._stats import (
    balanced_cells,
    mean_confidence_interval,
    two_by_two_subsets,
)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

#: Most items whose pairwise cosine distances enter a silhouette score.
SILHOUETTE_SAMPLE = 2000


@dataclass(frozen=True, kw_only=True)
class ClusteringConfig:
    """Settings of :func:`clustering_score`.

    Attributes:
        k_min, k_max: range of cluster counts K tried (capped below the subset size).
        n_repeats: independent runs per subset (subsample, K choice and K-means seed).
        max_items_per_cell: cap on the items per (class, center) cell after balancing;
            ``None`` keeps the smallest cell's count.
        max_subsets: most (2 classes x 2 centers) subsets evaluated, drawn at random when there
            are more; ``None`` for all.
        n_init: K-means initialisations per K (the best inertia is kept).
        seed: seeds subsampling and K-means, so the score is reproducible.
    """

    k_min: int = 2
    k_max: int = 30
    n_repeats: int = 3
    max_items_per_cell: int | None = 200
    max_subsets: int | None = 20
    n_init: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        if not 2 <= self.k_min <= self.k_max:
            raise ConfigError(f"need 2 <= k_min <= k_max, got {self.k_min}, {self.k_max}")
        for name in ("n_repeats", "max_items_per_cell", "max_subsets", "n_init"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be at least 1, got {value}")

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON-compatible values."""
        return asdict(self)


@dataclass(frozen=True, kw_only=True)
class SubsetScore:
    """Clustering of one (2 classes x 2 centers) subset, one entry per repeat.

    Attributes:
        classes, centers: the two classes and two centers.
        k: chosen number of clusters per repeat.
        ari_class, ari_center: adjusted Rand index of the clusters with class and with center,
            per repeat, in [-0.5, 1].
    """

    classes: tuple[str, str]
    centers: tuple[str, str]
    k: tuple[int, ...]
    ari_class: tuple[float, ...]
    ari_center: tuple[float, ...]

    @property
    def scores(self) -> tuple[float, ...]:
        """``ari_class - ari_center`` per repeat."""
        return tuple(a - b for a, b in zip(self.ari_class, self.ari_center, strict=True))

    def to_dict(self) -> dict[str, Any]:
        """Means over repeats; ``k`` is the most frequent choice (all in ``k_per_repeat``)."""
        return {
            "classes": list(self.classes),
            "centers": list(self.centers),
            "k": Counter(self.k).most_common(1)[0][0],
            "k_per_repeat": list(self.k),
            "ari_class": float(np.mean(self.ari_class)),
            "ari_center": float(np.mean(self.ari_center)),
            "score": float(np.mean(self.scores)),
        }


@dataclass(frozen=True, kw_only=True)
class ClusteringScoreResult:
    """The clustering score over all evaluated subsets.

    Attributes:
        value: mean of ``ARI(class) - ARI(center)`` over subsets and repeats, in [-1, 1];
            > 0 means the clusters follow biology more than the center.
        std: standard deviation of those scores.
        ci: 95 % Student-t interval of the mean, or ``None`` for a single score.
        ari_class, ari_center: means of the two ARIs.
        subsets: per-subset results.
        n_subsets_available: subsets with all four cells present, before ``max_subsets``.
        config: the settings used.
    """

    value: float
    std: float
    ci: tuple[float, float] | None
    ari_class: float
    ari_center: float
    subsets: tuple[SubsetScore, ...]
    n_subsets_available: int
    config: ClusteringConfig

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible summary for audit.json."""
        return {
            "value": self.value,
            "std": self.std,
            "ci": None if self.ci is None else list(self.ci),
            "ci_method": "95% Student-t interval of the mean over subset x repeat scores",
            "ari_class": self.ari_class,
            "ari_center": self.ari_center,
            "per_subset": [subset.to_dict() for subset in self.subsets],
            "parameters": {
                **self.config.to_dict(),
                "n_subsets_available": self.n_subsets_available,
            },
        }


def clustering_score(
    data: LabelledEmbeddings, config: ClusteringConfig = ClusteringConfig()
) -> ClusteringScoreResult:
    """PathoROB's clustering score of ``(N, D)`` embeddings (see the module docstring).

    Args:
        data: embeddings with class and center; needs at least two classes and two centers
            such that some 2 x 2 choice has all four (class, center) cells present.
        config: K range, repeats, balancing cap, subset cap and seed.

    Returns:
        :class:`ClusteringScoreResult`; runs ``n_subsets * n_repeats * (k_max - k_min + 1)``
        K-means fits at most.

    Raises:
        AuditDataError: fewer than two classes or centers, or no 2 x 2 subset with all four
            cells present.
    """
    subsets = _complete_subsets(data)
    rng = np.random.default_rng(config.seed)
    chosen = subsets
    if config.max_subsets is not None and len(subsets) > config.max_subsets:
        picks = rng.choice(len(subsets), size=config.max_subsets, replace=False)
        chosen = [subsets[i] for i in sorted(picks)]
    # K-means on a few hundred points splits into a handful of chunks, so OpenMP and BLAS
    # threads only wait on each other: on a busy 2-core machine one thread ran ten times faster.
    with threadpool_limits(limits=1):
        results = tuple(
            _score_subset(data, classes, centers, config, rng) for classes, centers in chosen
        )
    scores = np.concatenate([r.scores for r in results])
    return ClusteringScoreResult(
        value=float(scores.mean()),
        std=float(scores.std(ddof=1)) if scores.size > 1 else 0.0,
        ci=mean_confidence_interval(scores),
        ari_class=float(np.mean([a for r in results for a in r.ari_class])),
        ari_center=float(np.mean([a for r in results for a in r.ari_center])),
        subsets=results,
        n_subsets_available=len(subsets),
        config=config,
    )


def cluster_by_silhouette(
    points: FloatArray, k_values: range, *, n_init: int, rng: np.random.Generator
) -> tuple[int, IntArray]:
    """K-means with the K of ``k_values`` that maximises the cosine silhouette score.

    Args:
        points: ``(n, D)`` L2-normalised points.
        k_values: candidate cluster counts, each in ``[2, n - 1]``.
        n_init: K-means initialisations per K.
        rng: seeds K-means and the silhouette sample.

    Returns:
        ``(K, labels)``: the chosen K and the ``(n,)`` cluster of each point; ties go to the
        smaller K.
    """
    # scikit-learn loads on first use, not with the room.
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    sample = np.sort(
        rng.choice(len(points), size=min(len(points), SILHOUETTE_SAMPLE), replace=False)
    )
    # Points are unit length, so cosine distance is 1 - dot product; one matrix for all K.
    distances = np.clip(1.0 - points[sample] @ points[sample].T, 0.0, 2.0)
    np.fill_diagonal(distances, 0.0)
    best: tuple[float, int, IntArray] | None = None
    for k in k_values:
        kmeans = KMeans(n_clusters=k, n_init=n_init, random_state=int(rng.integers(2**31)))
        labels = np.asarray(kmeans.fit_predict(points), dtype=np.int64)
        if len(np.unique(labels[sample])) < 2:
            continue
        quality = float(silhouette_score(distances, labels[sample], metric="precomputed"))
        if best is None or quality > best[0]:
            best = (quality, k, labels)
    if best is None:
        # Every clustering collapsed onto duplicates of one point: one cluster is the honest answer.
        return 1, np.zeros(len(points), dtype=np.int64)
    return best[1], best[2]


def _score_subset(
    data: LabelledEmbeddings,
    classes: tuple[str, str],
    centers: tuple[str, str],
    config: ClusteringConfig,
    rng: np.random.Generator,
) -> SubsetScore:
    from sklearn.metrics import adjusted_rand_score

    ks, ari_class, ari_center = [], [], []
    for _ in range(config.n_repeats):
        rows = balanced_cells(
            data.label, data.center, classes, centers, config.max_items_per_cell, rng
        )
        points = _unit_rows(data.embeddings[rows])
        k_values = range(config.k_min, min(config.k_max, len(rows) - 1) + 1)
        k, labels = cluster_by_silhouette(points, k_values, n_init=config.n_init, rng=rng)
        ks.append(k)
        ari_class.append(float(adjusted_rand_score(data.label[rows], labels)))
        ari_center.append(float(adjusted_rand_score(data.center[rows], labels)))
    return SubsetScore(
        classes=classes,
        centers=centers,
        k=tuple(ks),
        ari_class=tuple(ari_class),
        ari_center=tuple(ari_center),
    )


def _complete_subsets(
    data: LabelledEmbeddings,
) -> list[tuple[tuple[str, str], tuple[str, str]]]:
    """Every (2 classes, 2 centers) choice whose four cells all hold data."""
    if len(data.classes) < 2 or len(data.centers) < 2:
        raise AuditDataError(
            f"the clustering score needs at least two classes and two centers, got classes "
            f"{list(data.classes)} and centers {list(data.centers)}"
        )
    subsets = two_by_two_subsets(data.label, data.center)
    if not subsets:
        raise AuditDataError(
            "no two classes occur in the same two centers, so class and center cannot be "
            "told apart by clustering; add data so that two centers share two classes"
        )
    return subsets


def _unit_rows(embeddings: npt.NDArray[np.float32]) -> FloatArray:
    x = embeddings.astype(np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    # An all-zero embedding has no direction: it stays at the origin instead of becoming NaN.
    return np.asarray(x / np.where(norms > 0, norms, 1.0), dtype=np.float64)
