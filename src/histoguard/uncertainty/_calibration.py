"""Calibration: temperature and vector scaling, and the metrics that say whether it worked.

A classifier's probabilities are *calibrated* when, among the cases it calls with confidence
0.8, about 80 % are right. Scaling maps fitted on a calibration split that training never saw
(Guo et al., ICML 2017) fix most of the over-confidence of modern networks without changing a
single prediction (temperature) or while changing few (vector scaling).

Metrics, all on probabilities ``(N, C)`` and integer labels ``(N,)``:

- :func:`expected_calibration_error`: top-label ECE, 15 bins, equal-width or equal-mass;
- :func:`ece_bootstrap`: the same with a percentile bootstrap interval over cases;
- :func:`brier_score`: mean over cases of the sum over classes of squared errors;
- :func:`negative_log_likelihood`: mean negative log probability of the true class, in nats;
- :func:`reliability_diagram`: per bin confidence, accuracy and count, for ``report/`` to draw.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from histoguard.errors import ConfigError

__all__ = [
    "ECE_BINS",
    "BinStrategy",
    "Calibrator",
    "ECEEstimate",
    "ReliabilityDiagram",
    "brier_score",
    "ece_bootstrap",
    "expected_calibration_error",
    "negative_log_likelihood",
    "reliability_diagram",
]

#: Bins of the expected calibration error, as in Guo et al. 2017.
ECE_BINS = 15

#: ``"width"``: bins of equal width on [0, 1]; ``"mass"``: bins holding equally many cases.
BinStrategy = Literal["width", "mass"]

CalibratorKind = Literal["temperature", "vector"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

_EPS = 1e-12
_LOG_T_BOUND = 7.0  # T in [1e-3, 1e3]: beyond that the calibration split is degenerate


def _as_logits(logits: npt.ArrayLike) -> FloatArray:
    array = np.asarray(logits, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] < 2 or array.shape[0] == 0:
        raise ConfigError(f"logits must have shape (N, C) with N >= 1, C >= 2; got {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ConfigError("logits contain NaN or infinite values")
    return array


def _as_labels(labels: npt.ArrayLike, n: int, n_classes: int) -> IntArray:
    array = np.asarray(labels)
    if array.shape != (n,):
        raise ConfigError(f"labels must have shape ({n},); got {array.shape}")
    if array.dtype.kind not in "iuf":
        raise ConfigError(f"labels must be integer class indices; got dtype {array.dtype}")
    integral = np.issubdtype(array.dtype, np.integer) or np.all(np.equal(np.mod(array, 1), 0))
    if array.size and not integral:
        raise ConfigError("labels must be integer class indices")
    out = array.astype(np.int64)
    if out.size and (out.min() < 0 or out.max() >= n_classes):
        raise ConfigError(f"labels must lie in [0, {n_classes}); got [{out.min()}, {out.max()}]")
    return out


def _as_probabilities(probabilities: npt.ArrayLike) -> FloatArray:
    array = np.asarray(probabilities, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] < 2 or array.shape[0] == 0:
        raise ConfigError(
            f"probabilities must have shape (N, C) with N >= 1, C >= 2; got {array.shape}"
        )
    if not np.all(np.isfinite(array)) or array.min() < 0.0 or array.max() > 1.0:
        raise ConfigError("probabilities must be finite and lie in [0, 1]")
    if not np.allclose(array.sum(axis=1), 1.0, atol=1e-4):
        raise ConfigError("each row of probabilities must sum to 1 (pass softmax outputs)")
    return array


def _softmax(z: FloatArray) -> FloatArray:
    shifted = z - z.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    out: FloatArray = e / e.sum(axis=1, keepdims=True)
    return out


def _log_softmax(z: FloatArray) -> FloatArray:
    shifted = z - z.max(axis=1, keepdims=True)
    out: FloatArray = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return out


@dataclass(frozen=True, kw_only=True)
class Calibrator:
    """A fitted scaling map from logits to calibrated probabilities.

    ``transform(z) = softmax(z * scale + bias)``. Temperature scaling has one shared scale
    ``1 / T`` and no bias; vector scaling has one scale and one bias per class. Save it next to
    the model with :meth:`to_dict` (JSON-ready) and load it with :meth:`from_dict`.

    Attributes:
        kind: ``"temperature"`` or ``"vector"``.
        scale: ``(C,)`` multipliers of the logits (all ``1 / T`` for temperature scaling).
        bias: ``(C,)`` offsets added after scaling (all 0 for temperature scaling).
    """

    kind: CalibratorKind
    scale: tuple[float, ...]
    bias: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.kind not in ("temperature", "vector"):
            raise ConfigError(
                f"calibrator kind must be 'temperature' or 'vector'; got {self.kind!r}"
            )
        if len(self.scale) < 2 or len(self.scale) != len(self.bias):
            raise ConfigError("scale and bias must both have one entry per class (C >= 2)")
        values = np.asarray(self.scale + self.bias, dtype=np.float64)
        if not np.all(np.isfinite(values)):
            raise ConfigError("calibrator parameters must be finite")
        if self.kind == "temperature":
            if len(set(self.scale)) != 1 or any(b != 0.0 for b in self.bias):
                raise ConfigError("temperature scaling has one shared scale and no bias")
            if self.scale[0] <= 0.0:
                raise ConfigError("temperature must be > 0")

    @property
    def n_classes(self) -> int:
        """Number of classes ``C`` the calibrator was fitted for."""
        return len(self.scale)

    @property
    def temperature(self) -> float:
        """The temperature ``T`` (> 0; > 1 softens over-confident logits). Temperature kind only.

        Raises:
            ConfigError: the calibrator is a vector scaling.
        """
        if self.kind != "temperature":
            raise ConfigError("a vector-scaling calibrator has no single temperature")
        return 1.0 / self.scale[0]

    @classmethod
    def identity(cls, n_classes: int) -> Calibrator:
        """The calibrator that changes nothing: temperature 1 for ``n_classes`` classes."""
        return cls(kind="temperature", scale=(1.0,) * n_classes, bias=(0.0,) * n_classes)

    @classmethod
    def fit(
        cls,
        logits: npt.ArrayLike,
        labels: npt.ArrayLike,
        *,
        kind: CalibratorKind = "temperature",
        l2: float = 1e-3,
    ) -> Calibrator:
        """Fit the scaling map by minimising the mean NLL on a calibration split.

        Args:
            logits: ``(N, C)`` uncalibrated logits from a model that never trained on these cases.
            labels: ``(N,)`` integer class indices in ``[0, C)``.
            kind: ``"temperature"`` (one ``T > 0``, fitted on ``log T``: never changes the
                predicted class) or ``"vector"`` (per-class scale and bias).
            l2: vector scaling only: penalty on ``|scale - 1|² + |bias|²`` per case, which keeps
                the fit finite when the calibration split is separable.

        Returns:
            The frozen, fitted :class:`Calibrator`.

        Raises:
            ConfigError: bad shapes, labels out of range, non-finite logits, unknown ``kind`` or
                ``l2 < 0``.
        """
        from scipy.optimize import minimize

        z = _as_logits(logits)
        y = _as_labels(labels, z.shape[0], z.shape[1])
        if not (isinstance(l2, int | float) and np.isfinite(l2) and l2 >= 0.0):
            raise ConfigError(f"l2 must be a finite number >= 0; got {l2!r}")
        n, c = z.shape
        rows = np.arange(n)
        onehot = np.zeros_like(z)
        onehot[rows, y] = 1.0

        if kind == "temperature":

            def nll_t(params: FloatArray) -> tuple[float, FloatArray]:
                inv_t = float(np.exp(-params[0]))
                scaled = z * inv_t
                logp = _log_softmax(scaled)
                loss = -float(logp[rows, y].mean())
                # d loss / d log T = -inv_t * mean(sum((p - onehot) * z))
                grad = -float(((np.exp(logp) - onehot) * scaled).sum(axis=1).mean())
                return loss, np.array([grad])

            result = minimize(
                nll_t,
                x0=np.zeros(1),
                jac=True,
                method="L-BFGS-B",
                bounds=[(-_LOG_T_BOUND, _LOG_T_BOUND)],
            )
            inv_t = float(np.exp(-result.x[0]))
            return cls(kind="temperature", scale=(inv_t,) * c, bias=(0.0,) * c)
        if kind == "vector":

            def nll_v(params: FloatArray) -> tuple[float, FloatArray]:
                w, b = params[:c], params[c:]
                logp = _log_softmax(z * w + b)
                loss = -float(logp[rows, y].mean()) + l2 * float(
                    ((w - 1.0) ** 2).sum() + (b**2).sum()
                )
                residual = (np.exp(logp) - onehot) / n
                grad_w = (residual * z).sum(axis=0) + 2.0 * l2 * (w - 1.0)
                grad_b = residual.sum(axis=0) + 2.0 * l2 * b
                return loss, np.concatenate([grad_w, grad_b])

            x0 = np.concatenate([np.ones(c), np.zeros(c)])
            result = minimize(nll_v, x0=x0, jac=True, method="L-BFGS-B")
            w, b = result.x[:c], result.x[c:]
            return cls(
                kind="vector",
                scale=tuple(float(v) for v in w),
                bias=tuple(float(v) for v in b),
            )
        raise ConfigError(f"calibrator kind must be 'temperature' or 'vector'; got {kind!r}")

    def transform(self, logits: npt.ArrayLike) -> FloatArray:
        """Calibrated probabilities ``(N, C)`` (rows sum to 1) from logits ``(N, C)``.

        Raises:
            ConfigError: ``logits`` is not ``(N, C)`` with this calibrator's ``C``, or not finite.
        """
        z = _as_logits(logits)
        if z.shape[1] != self.n_classes:
            raise ConfigError(
                f"calibrator was fitted for {self.n_classes} classes; logits have {z.shape[1]}"
            )
        return _softmax(z * np.asarray(self.scale) + np.asarray(self.bias))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description: ``{"kind", "scale", "bias"}`` (+ ``"temperature"``)."""
        out: dict[str, Any] = {
            "kind": self.kind,
            "scale": list(self.scale),
            "bias": list(self.bias),
        }
        if self.kind == "temperature":
            out["temperature"] = self.temperature
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibrator:
        """Rebuild a calibrator saved with :meth:`to_dict`.

        Raises:
            ConfigError: keys missing or values invalid.
        """
        try:
            kind = data["kind"]
            scale = tuple(float(v) for v in data["scale"])
            bias = tuple(float(v) for v in data["bias"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"not a saved calibrator (need kind, scale, bias): {exc}") from exc
        return cls(kind=kind, scale=scale, bias=bias)


@dataclass(frozen=True, kw_only=True)
class ReliabilityDiagram:
    """Per-bin data of a top-label reliability diagram (``report/`` draws it).

    Attributes:
        strategy: ``"width"`` or ``"mass"``.
        edges: ``(B + 1,)`` bin edges on the confidence axis, increasing, in [0, 1].
        confidence: ``(B,)`` mean top-label confidence per bin (NaN where the bin is empty).
        accuracy: ``(B,)`` fraction of correct top-label predictions per bin (NaN where empty).
        count: ``(B,)`` cases per bin.
    """

    strategy: BinStrategy
    edges: FloatArray
    confidence: FloatArray
    accuracy: FloatArray
    count: IntArray

    @property
    def ece(self) -> float:
        """Expected calibration error: count-weighted mean of ``|accuracy - confidence|``."""
        filled = self.count > 0
        gaps = np.abs(self.accuracy[filled] - self.confidence[filled])
        return float((gaps * self.count[filled]).sum() / self.count.sum())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready lists (empty bins as ``None``)."""

        def clean(values: FloatArray) -> list[float | None]:
            return [None if np.isnan(v) else float(v) for v in values]

        return {
            "strategy": self.strategy,
            "edges": [float(v) for v in self.edges],
            "confidence": clean(self.confidence),
            "accuracy": clean(self.accuracy),
            "count": [int(v) for v in self.count],
            "ece": self.ece,
        }


def _check_bins(n_bins: int, strategy: str) -> None:
    if isinstance(n_bins, bool) or not isinstance(n_bins, int | np.integer) or n_bins < 1:
        raise ConfigError(f"n_bins must be an integer >= 1; got {n_bins!r}")
    if strategy not in ("width", "mass"):
        raise ConfigError(f"strategy must be 'width' or 'mass'; got {strategy!r}")


def _diagram(
    confidence: FloatArray, correct: FloatArray, n_bins: int, strategy: BinStrategy
) -> ReliabilityDiagram:
    if strategy == "width":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
    else:
        # quantile edges: about N / B cases per bin, and tied confidences share one bin
        edges = np.quantile(confidence, np.linspace(0.0, 1.0, n_bins + 1))
        edges[0], edges[-1] = 0.0, 1.0
    # bin i holds (edges[i], edges[i + 1]]; a confidence of exactly 0 goes to bin 0
    index = np.searchsorted(edges[1:-1], confidence, side="left")
    count = np.bincount(index, minlength=n_bins).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf_sum = np.bincount(index, weights=confidence, minlength=n_bins)
        acc_sum = np.bincount(index, weights=correct, minlength=n_bins)
        mean_conf = np.where(count > 0, conf_sum / np.maximum(count, 1), np.nan)
        mean_acc = np.where(count > 0, acc_sum / np.maximum(count, 1), np.nan)
    return ReliabilityDiagram(
        strategy=strategy,
        edges=edges.astype(np.float64),
        confidence=mean_conf.astype(np.float64),
        accuracy=mean_acc.astype(np.float64),
        count=count,
    )


def _top_label(
    probabilities: npt.ArrayLike, labels: npt.ArrayLike
) -> tuple[FloatArray, FloatArray]:
    p = _as_probabilities(probabilities)
    y = _as_labels(labels, p.shape[0], p.shape[1])
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    return confidence, correct


def reliability_diagram(
    probabilities: npt.ArrayLike,
    labels: npt.ArrayLike,
    *,
    n_bins: int = ECE_BINS,
    strategy: BinStrategy = "width",
) -> ReliabilityDiagram:
    """Top-label reliability diagram: per bin of confidence, mean confidence, accuracy, count.

    Args:
        probabilities: ``(N, C)``, rows summing to 1.
        labels: ``(N,)`` integer class indices.
        n_bins: number of bins (15 by default).
        strategy: ``"width"`` (bins ``(k/B, (k+1)/B]``) or ``"mass"`` (edges at the quantiles
            of the confidences: about ``N / B`` cases each; tied confidences share a bin).

    Raises:
        ConfigError: bad shapes or values, ``n_bins < 1``, unknown ``strategy``.
    """
    _check_bins(n_bins, strategy)
    confidence, correct = _top_label(probabilities, labels)
    return _diagram(confidence, correct, int(n_bins), strategy)


def expected_calibration_error(
    probabilities: npt.ArrayLike,
    labels: npt.ArrayLike,
    *,
    n_bins: int = ECE_BINS,
    strategy: BinStrategy = "width",
) -> float:
    """Top-label ECE in [0, 1]: ``sum_b (n_b / N) |accuracy_b - confidence_b|``.

    Args and raises as :func:`reliability_diagram`.
    """
    return reliability_diagram(probabilities, labels, n_bins=n_bins, strategy=strategy).ece


@dataclass(frozen=True, kw_only=True)
class ECEEstimate:
    """An ECE with its percentile bootstrap interval over cases.

    The plug-in ECE is biased upwards (binning noise only adds gaps), and a resample with
    duplicated cases is more so: on a well-calibrated model the whole bootstrap distribution can
    sit above :attr:`ece`, so ``low > ece`` is possible. :attr:`bootstrap_mean` shows the size of
    that bias; compare calibrations by their intervals, not by the point estimate alone.

    Attributes:
        ece: ECE on all cases.
        bootstrap_mean: mean ECE over the resamples.
        low: lower end of the interval.
        high: upper end of the interval.
        level: interval level, e.g. 0.95.
        n_bootstrap: resamples drawn.
        strategy: binning, ``"width"`` or ``"mass"``.
        n_bins: number of bins.
    """

    ece: float
    bootstrap_mean: float
    low: float
    high: float
    level: float
    n_bootstrap: int
    strategy: BinStrategy
    n_bins: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {
            "ece": self.ece,
            "bootstrap_mean": self.bootstrap_mean,
            "low": self.low,
            "high": self.high,
            "level": self.level,
            "n_bootstrap": self.n_bootstrap,
            "strategy": self.strategy,
            "n_bins": self.n_bins,
        }


def ece_bootstrap(
    probabilities: npt.ArrayLike,
    labels: npt.ArrayLike,
    *,
    n_bins: int = ECE_BINS,
    strategy: BinStrategy = "width",
    n_bootstrap: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> ECEEstimate:
    """ECE with a percentile bootstrap interval, resampling cases with replacement.

    Args:
        probabilities: ``(N, C)``, rows summing to 1.
        labels: ``(N,)`` integer class indices.
        n_bins: number of bins.
        strategy: ``"width"`` or ``"mass"``.
        n_bootstrap: resamples (>= 1).
        level: interval level in (0, 1).
        seed: seed of the resampling; the same seed gives the same interval.

    Raises:
        ConfigError: bad inputs, ``n_bootstrap < 1``, ``level`` outside (0, 1).
    """
    _check_bins(n_bins, strategy)
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, int) or n_bootstrap < 1:
        raise ConfigError(f"n_bootstrap must be an integer >= 1; got {n_bootstrap!r}")
    if not (isinstance(level, int | float) and 0.0 < level < 1.0):
        raise ConfigError(f"level must lie in (0, 1); got {level!r}")
    confidence, correct = _top_label(probabilities, labels)
    n = confidence.shape[0]
    rng = np.random.default_rng(seed)
    values = np.empty(n_bootstrap)
    for i in range(n_bootstrap):
        take = rng.integers(0, n, size=n)
        values[i] = _diagram(confidence[take], correct[take], int(n_bins), strategy).ece
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(values, [tail, 1.0 - tail])
    return ECEEstimate(
        ece=_diagram(confidence, correct, int(n_bins), strategy).ece,
        bootstrap_mean=float(values.mean()),
        low=float(low),
        high=float(high),
        level=float(level),
        n_bootstrap=n_bootstrap,
        strategy=strategy,
        n_bins=int(n_bins),
    )


def brier_score(probabilities: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """Multi-class Brier score in [0, 2]: mean over cases of ``sum_c (p_c - [y = c])²``.

    For two classes this is twice scikit-learn's binary ``brier_score_loss`` (which counts the
    positive class only).

    Raises:
        ConfigError: bad shapes or values.
    """
    p = _as_probabilities(probabilities)
    y = _as_labels(labels, p.shape[0], p.shape[1])
    onehot = np.zeros_like(p)
    onehot[np.arange(p.shape[0]), y] = 1.0
    return float(((p - onehot) ** 2).sum(axis=1).mean())


def negative_log_likelihood(probabilities: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """Mean negative log probability of the true class, in nats (probabilities clipped at 1e-12).

    Raises:
        ConfigError: bad shapes or values.
    """
    p = _as_probabilities(probabilities)
    y = _as_labels(labels, p.shape[0], p.shape[1])
    return float(-np.log(np.clip(p[np.arange(p.shape[0]), y], _EPS, 1.0)).mean())
