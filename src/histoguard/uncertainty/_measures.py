"""Uncertainty measures from several predictions of the same cases.

Members are any ``M`` probability vectors for each of ``N`` cases: the ``k`` fold models of a
cross-validation, a deep ensemble over seeds, or ``M`` MC-dropout passes. Stacked, they form an
array ``(M, N, C)``. The total uncertainty of the mean prediction (predictive entropy) splits into
an aleatoric part, the members' own mean entropy, and an epistemic part, the mutual information
between the prediction and the member (how much the members disagree) — Depeweg et al. 2018.
All entropies are in nats.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from histoguard.errors import ConfigError

__all__ = [
    "UncertaintyMeasures",
    "attention_weighted_uncertainty",
    "expected_entropy",
    "mutual_information",
    "predicted_class_variance",
    "predictive_entropy",
    "uncertainty_measures",
]

FloatArray = npt.NDArray[np.float64]

_SUM_TOLERANCE = 1e-4


def _as_members(probabilities: npt.ArrayLike) -> FloatArray:
    array = np.asarray(probabilities, dtype=np.float64)
    if array.ndim != 3 or min(array.shape[:2]) == 0 or array.shape[2] < 2:
        raise ConfigError(
            "member probabilities must have shape (M, N, C) with M, N >= 1 and C >= 2; "
            f"got {array.shape} (stack one (N, C) array per member along axis 0)"
        )
    if not np.all(np.isfinite(array)) or array.min() < 0.0 or array.max() > 1.0:
        raise ConfigError("member probabilities must be finite and lie in [0, 1]")
    if not np.allclose(array.sum(axis=2), 1.0, atol=_SUM_TOLERANCE):
        raise ConfigError("each member's probabilities must sum to 1 over classes")
    return array


def _entropy(p: FloatArray) -> FloatArray:
    """Entropy in nats along the last axis; 0 log 0 = 0."""
    safe = np.where(p > 0.0, p, 1.0)
    out: FloatArray = -(p * np.log(safe)).sum(axis=-1)
    return out


def predictive_entropy(probabilities: npt.ArrayLike) -> FloatArray:
    """Total uncertainty: entropy of the members' mean prediction, ``(N,)`` in nats.

    Args:
        probabilities: ``(M, N, C)`` member probabilities (rows sum to 1).

    Returns:
        ``(N,)`` values in ``[0, log C]``.

    Raises:
        ConfigError: wrong shape or values that are not probabilities.
    """
    p = _as_members(probabilities)
    return _entropy(p.mean(axis=0))


def expected_entropy(probabilities: npt.ArrayLike) -> FloatArray:
    """Aleatoric uncertainty: the members' mean entropy, ``(N,)`` in nats, in ``[0, log C]``.

    Raises:
        ConfigError: as :func:`predictive_entropy`.
    """
    p = _as_members(probabilities)
    out: FloatArray = _entropy(p).mean(axis=0)
    return out


def mutual_information(probabilities: npt.ArrayLike) -> FloatArray:
    """Epistemic uncertainty: predictive entropy minus expected entropy, ``(N,)`` in nats.

    0 when all members agree; at most ``log M`` (and ``log C``). Clipped at 0 against rounding.

    Raises:
        ConfigError: as :func:`predictive_entropy`.
    """
    p = _as_members(probabilities)
    out: FloatArray = np.maximum(_entropy(p.mean(axis=0)) - _entropy(p).mean(axis=0), 0.0)
    return out


def predicted_class_variance(probabilities: npt.ArrayLike) -> FloatArray:
    """Variance over members of the probability of the mean-predicted class, ``(N,)``.

    The predicted class is the arg-max of the members' mean; the variance is the population
    variance (divided by ``M``), in probability² units, in ``[0, 0.25]``.

    Raises:
        ConfigError: as :func:`predictive_entropy`.
    """
    p = _as_members(probabilities)
    predicted = p.mean(axis=0).argmax(axis=1)
    chosen = p[:, np.arange(p.shape[1]), predicted]
    out: FloatArray = chosen.var(axis=0)
    return out


@dataclass(frozen=True, kw_only=True)
class UncertaintyMeasures:
    """All measures for ``N`` cases from ``M`` members (entropies in nats).

    Attributes:
        mean_probabilities: ``(N, C)`` the members' mean prediction.
        predictive_entropy: ``(N,)`` total uncertainty.
        expected_entropy: ``(N,)`` aleatoric part.
        mutual_information: ``(N,)`` epistemic part (total - aleatoric).
        variance: ``(N,)`` variance of the predicted class's probability over members.
        n_members: ``M``.
    """

    mean_probabilities: FloatArray
    predictive_entropy: FloatArray
    expected_entropy: FloatArray
    mutual_information: FloatArray
    variance: FloatArray
    n_members: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready lists, one entry per case."""
        return {
            "n_members": self.n_members,
            "mean_probabilities": self.mean_probabilities.tolist(),
            "predictive_entropy": self.predictive_entropy.tolist(),
            "expected_entropy": self.expected_entropy.tolist(),
            "mutual_information": self.mutual_information.tolist(),
            "variance": self.variance.tolist(),
        }


def uncertainty_measures(probabilities: npt.ArrayLike) -> UncertaintyMeasures:
    """Every measure at once from member probabilities ``(M, N, C)``.

    Raises:
        ConfigError: as :func:`predictive_entropy`.
    """
    p = _as_members(probabilities)
    mean = p.mean(axis=0)
    total = _entropy(mean)
    aleatoric = _entropy(p).mean(axis=0)
    predicted = mean.argmax(axis=1)
    return UncertaintyMeasures(
        mean_probabilities=mean,
        predictive_entropy=total,
        expected_entropy=aleatoric,
        mutual_information=np.maximum(total - aleatoric, 0.0),
        variance=p[:, np.arange(p.shape[1]), predicted].var(axis=0),
        n_members=int(p.shape[0]),
    )


def attention_weighted_uncertainty(
    tile_uncertainty: npt.ArrayLike, attention: npt.ArrayLike
) -> float:
    """A slide's uncertainty as the attention-weighted mean of its tiles' uncertainty.

    Tiles the model looks at count; background tiles with near-zero attention do not.

    Args:
        tile_uncertainty: ``(N_tiles,)`` any per-tile measure (e.g. entropy in nats), finite.
        attention: ``(N_tiles,)`` non-negative weights summing to 1 (a MIL model's softmax
            attention).

    Returns:
        ``sum_i attention_i * tile_uncertainty_i``, in the units of ``tile_uncertainty``.

    Raises:
        ConfigError: shapes differ or are not 1-D and non-empty, values not finite, attention
            negative or not summing to 1 (tolerance 1e-4).
    """
    u = np.asarray(tile_uncertainty, dtype=np.float64)
    a = np.asarray(attention, dtype=np.float64)
    if u.ndim != 1 or u.size == 0 or a.shape != u.shape:
        raise ConfigError(
            "tile_uncertainty and attention must both have shape (N_tiles,) with N_tiles >= 1; "
            f"got {u.shape} and {a.shape}"
        )
    if not (np.all(np.isfinite(u)) and np.all(np.isfinite(a))):
        raise ConfigError("tile_uncertainty and attention must be finite")
    if a.min() < 0.0 or abs(float(a.sum()) - 1.0) > _SUM_TOLERANCE:
        raise ConfigError(
            f"attention must be non-negative and sum to 1; got sum {float(a.sum()):.6g}"
        )
    return float((a * u).sum())
