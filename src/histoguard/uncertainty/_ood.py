"""A label-free out-of-distribution gate: is this case, or this batch, like the training data?

Per case: a distance of its embedding to a reference (training) set — the mean cosine distance
to its k nearest reference rows, or the Mahalanobis distance under a shrinkage covariance —
turned into a conformal p-value against held-out in-distribution calibration cases. For an
exchangeable in-distribution case the p-value is uniform, so rejecting at p <= alpha raises a
false alarm with probability at most alpha. Per batch: a two-sample MMD test with a permutation
p-value says whether a whole batch differs from the reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal, get_args

import numpy as np
import numpy.typing as npt

from histoguard.errors import ConfigError

OODScore = Literal["knn", "knn-euclidean", "mahalanobis"]
KNNMetric = Literal["cosine", "euclidean"]


def _matrix(x: npt.ArrayLike, name: str, dim: int | None = None) -> npt.NDArray[np.float64]:
    m = np.asarray(x, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] == 0:
        raise ConfigError(f"{name} must have shape (N, D) with N >= 1, got {m.shape}")
    if dim is not None and m.shape[1] != dim:
        raise ConfigError(f"{name} has {m.shape[1]} features, the reference has {dim}")
    if not np.all(np.isfinite(m)):
        raise ConfigError(f"{name} must be finite")
    return m


def slide_embedding(features: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """One slide's embedding for the gate: the mean and the standard deviation of its tiles'
    features, side by side.

    The mean sees a shift every tile shares (another lab's stain, another organ); the spread
    sees one that varies from tile to tile (uneven staining, an unstable scanner), which
    leaves the mean where it was. The encoder's features do not depend on the slide model, so
    the training slides' embeddings are exchangeable with those of new in-distribution slides.

    Args:
        features: (N_tiles, D) tile features of one slide, N_tiles >= 1, finite.

    Returns:
        (2 D,) float64: the D means, then the D standard deviations (0 for a single tile).

    Raises:
        ConfigError: an empty or non-finite bag, or not 2-D.
    """
    m = np.asarray(features)
    if m.ndim != 2 or m.shape[0] == 0:
        raise ConfigError(f"tile features must have shape (N, D) with N >= 1, got {m.shape}")
    # Reduced in float64 without a float64 copy of the bag (4,000 x 1,024 float32 is 16 MB);
    # a NaN or infinity anywhere makes its column's mean non-finite, so checking the mean is
    # checking the bag.
    mean = m.mean(axis=0, dtype=np.float64)
    if not np.all(np.isfinite(mean)):
        raise ConfigError("tile features must be finite")
    embedding: npt.NDArray[np.float64] = np.concatenate([mean, m.std(axis=0, dtype=np.float64)])
    return embedding


def knn_distance(
    reference: npt.ArrayLike,
    queries: npt.ArrayLike,
    *,
    k: int = 10,
    metric: KNNMetric = "cosine",
) -> npt.NDArray[np.float64]:
    """Mean distance of each query to its k nearest reference rows.

    Cosine distance ignores how far a query lies along a direction the reference also points
    to (a uniform shift of every feature can look normal); Euclidean distance sees it.

    Args:
        reference: (M, D) in-distribution embeddings (e.g. the training tiles).
        queries: (N, D) embeddings to score.
        k: neighbours, 1 <= k <= M.
        metric: ``"cosine"`` (1 - cosine similarity, in [0, 2]) or ``"euclidean"`` (divided
            by sqrt(D), so standardised features give values of order 1).

    Returns:
        (N,) distances; higher is stranger.

    Raises:
        ConfigError: k out of range, an unknown metric, or shapes that do not fit.
    """
    ref = _matrix(reference, "reference")
    q = _matrix(queries, "queries", ref.shape[1])
    if not 1 <= k <= ref.shape[0]:
        raise ConfigError(f"k must lie in [1, {ref.shape[0]}] (reference rows), got {k}")
    if metric == "euclidean":
        squared = (q**2).sum(axis=1)[:, None] + (ref**2).sum(axis=1)[None, :] - 2.0 * q @ ref.T
        distance = np.sqrt(np.maximum(squared, 0.0) / ref.shape[1])
        nearest = np.partition(distance, k - 1, axis=1)[:, :k]
        euclidean: npt.NDArray[np.float64] = nearest.mean(axis=1)
        return euclidean
    if metric != "cosine":
        raise ConfigError(f"metric must be 'cosine' or 'euclidean', got {metric!r}")
    eps = 1e-12
    ref_n = ref / np.maximum(np.linalg.norm(ref, axis=1, keepdims=True), eps)
    q_n = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), eps)
    distance = 1.0 - q_n @ ref_n.T
    nearest = np.partition(distance, k - 1, axis=1)[:, :k]
    result: npt.NDArray[np.float64] = np.clip(nearest.mean(axis=1), 0.0, 2.0)
    return result


def mahalanobis_distance(
    reference: npt.ArrayLike, queries: npt.ArrayLike
) -> npt.NDArray[np.float64]:
    """Mahalanobis distance of each query to the reference, under a Ledoit-Wolf covariance.

    Shrinkage keeps the covariance invertible when D is close to, or above, M.

    Args:
        reference: (M, D) in-distribution embeddings, M >= 2.
        queries: (N, D).

    Returns:
        (N,) distances (square root of the quadratic form), >= 0.

    Raises:
        ConfigError: fewer than two reference rows, or shapes that do not fit.
    """
    ref = _matrix(reference, "reference")
    q = _matrix(queries, "queries", ref.shape[1])
    return _mahalanobis(_ledoit_wolf(ref), q)


def _ledoit_wolf(reference: npt.NDArray[np.float64]) -> Any:
    """The fitted scikit-learn ``LedoitWolf`` of (M, D) reference rows, M >= 2."""
    from sklearn.covariance import LedoitWolf

    if reference.shape[0] < 2:
        raise ConfigError("the Mahalanobis score needs at least two reference rows")
    return LedoitWolf().fit(reference)


def _mahalanobis(fitted: Any, queries: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    squared = np.asarray(fitted.mahalanobis(queries), dtype=np.float64)
    result: npt.NDArray[np.float64] = np.sqrt(np.maximum(squared, 0.0))
    return result


def conformal_p_values(
    calibration_scores: npt.ArrayLike, test_scores: npt.ArrayLike
) -> npt.NDArray[np.float64]:
    """Conformal p-values: (1 + #{calibration >= s}) / (n + 1) for each test score s.

    Args:
        calibration_scores: (n,) scores of held-out in-distribution cases (higher = stranger).
        test_scores: (N,) scores of the cases to test.

    Returns:
        (N,) p-values in [1/(n+1), 1]; small means unlike the calibration cases.

    Raises:
        ConfigError: empty calibration, non-1-d or non-finite scores.
    """
    cal = np.asarray(calibration_scores, dtype=np.float64)
    test = np.asarray(test_scores, dtype=np.float64)
    if cal.ndim != 1 or cal.size == 0 or test.ndim != 1:
        raise ConfigError("calibration scores (n >= 1) and test scores must be 1-d")
    if not (np.all(np.isfinite(cal)) and np.all(np.isfinite(test))):
        raise ConfigError("scores must be finite")
    ordered = np.sort(cal)
    at_least = cal.size - np.searchsorted(ordered, test, side="left")
    result = np.asarray((1.0 + at_least) / (cal.size + 1.0), dtype=np.float64)
    return result


@dataclass(frozen=True, kw_only=True, eq=False)
class OODGate:
    """A fitted per-case OOD gate: reference embeddings plus calibration scores.

    Embeddings are standardised with the reference mean and standard deviation before scoring,
    so no feature dominates the distance by its units. Build it with :meth:`fit`.

    Attributes:
        score: ``"knn"`` (cosine), ``"knn-euclidean"`` or ``"mahalanobis"``.
        k: neighbours for the kNN scores.
        mean, scale: (D,) standardisation of the reference.
        reference: (M, D) standardised reference embeddings.
        calibration_scores: (n,) sorted scores of the held-out in-distribution cases.
    """

    score: OODScore
    k: int
    mean: npt.NDArray[np.float64]
    scale: npt.NDArray[np.float64]
    reference: npt.NDArray[np.float64]
    calibration_scores: npt.NDArray[np.float64]

    @classmethod
    def fit(
        cls,
        reference: npt.ArrayLike,
        calibration: npt.ArrayLike,
        *,
        score: OODScore = "knn",
        k: int = 10,
    ) -> OODGate:
        """Fit the gate.

        Args:
            reference: (M, D) embeddings of the training data.
            calibration: (n, D) embeddings of held-out in-distribution cases, disjoint from the
                reference (by patient / slide / source group), or the p-values are not valid.
            score: ``"knn"`` (cosine), ``"knn-euclidean"`` or ``"mahalanobis"``.
            k: neighbours for the kNN scores.

        Raises:
            ConfigError: an unknown score, or shapes that do not fit.
        """
        if score not in get_args(OODScore):
            raise ConfigError(f"score must be one of {get_args(OODScore)}, got {score!r}")
        ref = _matrix(reference, "reference")
        cal = _matrix(calibration, "calibration", ref.shape[1])
        mean = ref.mean(axis=0)
        scale = ref.std(axis=0)
        scale = np.where(scale > 1e-12, scale, 1.0)
        gate = cls(
            score=score,
            k=k,
            mean=mean,
            scale=scale,
            reference=(ref - mean) / scale,
            calibration_scores=np.zeros(1),
        )
        object.__setattr__(gate, "calibration_scores", np.sort(gate.scores(cal)))
        return gate

    def scores(self, embeddings: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """(N,) OOD scores of (N, D) embeddings; higher is stranger.

        Raises:
            ConfigError: embeddings of the wrong width.
        """
        x = (_matrix(embeddings, "embeddings", self.reference.shape[1]) - self.mean) / self.scale
        if self.score == "knn":
            return knn_distance(self.reference, x, k=self.k)
        if self.score == "knn-euclidean":
            return knn_distance(self.reference, x, k=self.k, metric="euclidean")
        return _mahalanobis(self._covariance, x)

    @cached_property
    def _covariance(self) -> Any:
        # Fitted once per gate, not per call: for a 500 x 1,024 reference the fit and its
        # inverse take about a second on two CPU cores, one slide's distance a millisecond.
        return _ledoit_wolf(self.reference)

    def p_values(self, embeddings: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """(N,) conformal p-values of (N, D) embeddings; reject at p <= alpha.

        Raises:
            ConfigError: embeddings of the wrong width.
        """
        return conformal_p_values(self.calibration_scores, self.scores(embeddings))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary (arrays as nested lists)."""
        return {
            "score": self.score,
            "k": self.k,
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "reference": self.reference.tolist(),
            "calibration_scores": self.calibration_scores.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OODGate:
        """Rebuild from :meth:`to_dict`.

        Raises:
            ConfigError: a missing key or an unknown score.
        """
        try:
            score = data["score"]
            if score not in get_args(OODScore):
                raise ConfigError(f"unknown OOD score {score!r}")
            return cls(
                score=score,
                k=int(data["k"]),
                mean=np.asarray(data["mean"], dtype=np.float64),
                scale=np.asarray(data["scale"], dtype=np.float64),
                reference=np.asarray(data["reference"], dtype=np.float64),
                calibration_scores=np.asarray(data["calibration_scores"], dtype=np.float64),
            )
        except KeyError as error:
            raise ConfigError(f"OOD gate dictionary lacks the key {error}") from None


@dataclass(frozen=True, kw_only=True)
class MMDResult:
    """A two-sample MMD test.

    Attributes:
        statistic: the unbiased estimate of MMD^2 (can be slightly negative).
        p_value: permutation p-value, (1 + #{permuted >= observed}) / (1 + permutations).
        bandwidth: the RBF bandwidth sigma used, k(a, b) = exp(-|a - b|^2 / (2 sigma^2)).
        permutations: how many permutations were drawn.
    """

    statistic: float
    p_value: float
    bandwidth: float
    permutations: int


def _mmd2_unbiased(kernel: npt.NDArray[np.float64], n: int) -> float:
    kxx = kernel[:n, :n]
    kyy = kernel[n:, n:]
    kxy = kernel[:n, n:]
    m = kernel.shape[0] - n
    sum_xx = (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
    sum_yy = (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(sum_xx + sum_yy - 2.0 * kxy.mean())


def mmd_test(
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    *,
    permutations: int = 1000,
    bandwidth: float | None = None,
    seed: int = 0,
) -> MMDResult:
    """Do two samples come from the same distribution? MMD with an RBF kernel.

    Args:
        x: (n, D) e.g. reference embeddings, n >= 2.
        y: (m, D) e.g. an incoming batch, m >= 2.
        permutations: random relabellings for the p-value, >= 1.
        bandwidth: RBF sigma; None: the median heuristic (median pairwise distance of the
            pooled sample).
        seed: seed of the permutations.

    Returns:
        An :class:`MMDResult`; reject "same distribution" at ``p_value <= alpha``.

    Raises:
        ConfigError: fewer than two rows in a sample, widths that differ, permutations < 1,
            or a bandwidth that is not positive.
    """
    a = _matrix(x, "x")
    b = _matrix(y, "y", a.shape[1])
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ConfigError("each sample of the MMD test needs at least two rows")
    if permutations < 1:
        raise ConfigError(f"permutations must be >= 1, got {permutations}")
    pooled = np.vstack([a, b])
    sq = np.sum(pooled**2, axis=1)
    distance2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * pooled @ pooled.T, 0.0)
    if bandwidth is None:
        upper = distance2[np.triu_indices(pooled.shape[0], k=1)]
        sigma = float(np.sqrt(np.median(upper)))
        sigma = sigma if sigma > 0 else 1.0
    elif bandwidth > 0:
        sigma = float(bandwidth)
    else:
        raise ConfigError(f"bandwidth must be positive, got {bandwidth}")
    kernel = np.exp(-distance2 / (2.0 * sigma**2))
    n = a.shape[0]
    observed = _mmd2_unbiased(kernel, n)
    rng = np.random.default_rng(seed)
    exceed = 0
    for _ in range(permutations):
        order = rng.permutation(pooled.shape[0])
        if _mmd2_unbiased(kernel[np.ix_(order, order)], n) >= observed:
            exceed += 1
    return MMDResult(
        statistic=observed,
        p_value=(1.0 + exceed) / (1.0 + permutations),
        bandwidth=sigma,
        permutations=permutations,
    )
