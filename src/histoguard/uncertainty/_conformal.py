"""Split conformal prediction sets for classification: LAC and APS scores, Mondrian thresholds.

Given probabilities of a trained model on a calibration split it never saw, a threshold on a
nonconformity score is chosen so that, for a new exchangeable case, the set of classes whose
score is below the threshold contains the true class with probability at least 1 - alpha
(Vovk et al. 2005; Romano et al. 2020 for APS). Mondrian thresholds (one per class or per group,
e.g. per center) make the guarantee hold within each class or group, not only on average.
A set that is not exactly one class means "review".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast, get_args

import numpy as np
import numpy.typing as npt

from histoguard.errors import ConfigError

Score = Literal["lac", "aps"]
Mondrian = Literal["none", "class", "group"]

#: Version of the dictionary written by :meth:`ConformalClassifier.to_dict`.
CONFORMAL_FORMAT = 1

_PROB_TOLERANCE = 1e-3


def _check_alpha(alpha: float) -> None:
    if not (isinstance(alpha, int | float) and 0.0 < float(alpha) < 1.0):
        raise ConfigError(f"alpha must lie strictly between 0 and 1, got {alpha!r}")


def _check_probabilities(probabilities: npt.ArrayLike) -> npt.NDArray[np.float64]:
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ConfigError(f"probabilities must have shape (N, C) with C >= 2, got {p.shape}")
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ConfigError("probabilities must be finite and non-negative")
    if p.shape[0] and np.max(np.abs(p.sum(axis=1) - 1.0)) > _PROB_TOLERANCE:
        raise ConfigError("each row of probabilities must sum to 1 (apply softmax first)")
    return p


def _check_labels(labels: npt.ArrayLike, n: int, n_classes: int) -> npt.NDArray[np.int64]:
    y = np.asarray(labels)
    if y.shape != (n,) or (n and not np.issubdtype(y.dtype, np.integer)):
        raise ConfigError(f"labels must be {n} integer class indices, got shape {y.shape}")
    y = y.astype(np.int64)
    if n and (y.min() < 0 or y.max() >= n_classes):
        raise ConfigError(f"labels must lie in [0, {n_classes}), got [{y.min()}, {y.max()}]")
    return y


def conformal_quantile(scores: npt.ArrayLike, alpha: float) -> float:
    """The split-conformal threshold: the ceil((n+1)(1-alpha))-th smallest calibration score.

    Args:
        scores: (n,) nonconformity scores of the calibration cases (higher = stranger).
        alpha: the miscoverage level in (0, 1).

    Returns:
        The threshold; ``inf`` when n is too small for the level (ceil((n+1)(1-alpha)) > n),
        so every class is kept, which is the only valid answer.

    Raises:
        ConfigError: alpha outside (0, 1), scores not 1-d or not finite.
    """
    _check_alpha(alpha)
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or not np.all(np.isfinite(s)):
        raise ConfigError("scores must be a 1-d array of finite numbers")
    n = s.size
    rank = math.ceil((n + 1) * (1.0 - alpha) - 1e-9)
    if rank > n:
        return math.inf
    return float(np.sort(s)[rank - 1])


def class_scores(
    probabilities: npt.ArrayLike,
    *,
    score: Score = "lac",
    randomized: bool = True,
    seed: int = 0,
) -> npt.NDArray[np.float64]:
    """The nonconformity score every class would have if it were the true one.

    * ``lac`` (least ambiguous set-valued classifier): 1 - p_c.
    * ``aps`` (adaptive prediction sets): the probability mass of all classes ranked above c
      (ties broken by class index) plus p_c; randomised, ``u * p_c`` replaces p_c with
      u ~ U(0, 1) per case (drawn from ``seed``), which makes coverage exact rather than
      conservative.

    Args:
        probabilities: (N, C) class probabilities, rows summing to 1.
        score: ``"lac"`` or ``"aps"``.
        randomized: APS only: randomised tie-breaking.
        seed: APS only: seed of the uniform draws.

    Returns:
        (N, C) scores in [0, 1].

    Raises:
        ConfigError: an unknown score, or probabilities of the wrong shape or not normalised.
    """
    if score not in get_args(Score):
        raise ConfigError(f"score must be one of {get_args(Score)}, got {score!r}")
    p = _check_probabilities(probabilities)
    if score == "lac":
        return 1.0 - p
    order = np.argsort(-p, axis=1, kind="stable")
    sorted_p = np.take_along_axis(p, order, axis=1)
    cumulative = np.cumsum(sorted_p, axis=1)
    if randomized:
        u = np.random.default_rng(seed).uniform(size=(p.shape[0], 1))
        cumulative = cumulative - (1.0 - u) * sorted_p
    out = np.empty_like(p)
    np.put_along_axis(out, order, cumulative, axis=1)
    return out


def nonconformity_scores(
    probabilities: npt.ArrayLike,
    labels: npt.ArrayLike,
    *,
    score: Score = "lac",
    randomized: bool = True,
    seed: int = 0,
) -> npt.NDArray[np.float64]:
    """The score of the true class of each case (see :func:`class_scores`).

    Args:
        probabilities: (N, C) class probabilities.
        labels: (N,) true class indices.
        score, randomized, seed: as in :func:`class_scores`.

    Returns:
        (N,) scores; higher means the true class looked less plausible to the model.

    Raises:
        ConfigError: invalid score, probabilities or labels.
    """
    all_scores = class_scores(probabilities, score=score, randomized=randomized, seed=seed)
    y = _check_labels(labels, *all_scores.shape)
    return all_scores[np.arange(y.size), y]


def min_calibration_size(alpha: float) -> int:
    """The fewest calibration cases a Mondrian cell needs for its own threshold.

    Below ceil(1/alpha) - 1 cases, ceil((n+1)(1-alpha)) > n and the threshold would be infinite
    (every class in every set); such a cell falls back to the marginal threshold.

    Raises:
        ConfigError: alpha outside (0, 1).
    """
    _check_alpha(alpha)
    return max(math.ceil(1.0 / alpha - 1e-9) - 1, 1)


@dataclass(frozen=True, kw_only=True)
class ConformalClassifier:
    """A fitted split-conformal predictor: thresholds on a nonconformity score.

    Build it with :meth:`fit`; it holds no model, only the thresholds, and is applied to the
    probabilities of the same model on new cases.

    Attributes:
        alpha: the miscoverage level; sets contain the truth with probability >= 1 - alpha.
        score: ``"lac"`` or ``"aps"``.
        mondrian: ``"none"`` (one marginal threshold), ``"class"`` (one per class) or ``"group"``
            (one per group label such as the center).
        randomized: APS randomised tie-breaking.
        seed: seed of the APS uniform draws at prediction time.
        n_classes: C.
        threshold: the marginal threshold (from all calibration cases).
        thresholds: threshold per class index (as a string) or per group name; cells with too
            few calibration cases hold the marginal threshold.
        counts: calibration cases per cell.
        fallback: cells that fell back to the marginal threshold (too few calibration cases).
    """

    alpha: float
    score: Score
    mondrian: Mondrian
    randomized: bool
    seed: int
    n_classes: int
    threshold: float
    thresholds: Mapping[str, float] = field(default_factory=dict)
    counts: Mapping[str, int] = field(default_factory=dict)
    fallback: tuple[str, ...] = ()

    @classmethod
    def fit(
        cls,
        probabilities: npt.ArrayLike,
        labels: npt.ArrayLike,
        groups: Sequence[str] | npt.ArrayLike | None = None,
        *,
        alpha: float = 0.1,
        score: Score = "lac",
        mondrian: Mondrian = "none",
        randomized: bool = True,
        seed: int = 0,
    ) -> ConformalClassifier:
        """Calibrate thresholds on held-out cases.

        Args:
            probabilities: (N, C) probabilities of the model on calibration cases it never saw.
            labels: (N,) their true class indices.
            groups: (N,) group labels (e.g. the center), needed for ``mondrian="group"``.
            alpha: miscoverage level in (0, 1).
            score: ``"lac"`` or ``"aps"``.
            mondrian: ``"none"``, ``"class"`` or ``"group"``.
            randomized: APS only: randomised tie-breaking.
            seed: APS only: seed of the uniform draws (calibration uses ``seed``, prediction
                ``seed + 1``, so the draws are independent).

        Raises:
            ConfigError: invalid alpha, score, mondrian, shapes, or groups missing for
                ``mondrian="group"``, or no calibration case at all.
        """
        _check_alpha(alpha)
        if mondrian not in get_args(Mondrian):
            raise ConfigError(f"mondrian must be one of {get_args(Mondrian)}, got {mondrian!r}")
        p = _check_probabilities(probabilities)
        if p.shape[0] == 0:
            raise ConfigError("no calibration cases: conformal prediction needs at least one")
        s = nonconformity_scores(p, labels, score=score, randomized=randomized, seed=seed)
        y = np.asarray(labels).astype(np.int64)
        threshold = conformal_quantile(s, alpha)
        thresholds: dict[str, float] = {}
        counts: dict[str, int] = {}
        fallback: list[str] = []
        if mondrian != "none":
            if mondrian == "class":
                keys = np.array([str(c) for c in y])
                names = [str(c) for c in range(p.shape[1])]
            else:
                keys = _check_groups(groups, p.shape[0])
                names = sorted(set(keys.tolist()))
            needed = min_calibration_size(alpha)
            for name in names:
                cell = s[keys == name]
                counts[name] = int(cell.size)
                if cell.size < needed:
                    thresholds[name] = threshold
                    fallback.append(name)
                else:
                    thresholds[name] = conformal_quantile(cell, alpha)
        return cls(
            alpha=float(alpha),
            score=score,
            mondrian=mondrian,
            randomized=randomized,
            seed=seed,
            n_classes=p.shape[1],
            threshold=threshold,
            thresholds=thresholds,
            counts=counts,
            fallback=tuple(fallback),
        )

    def predict_sets(
        self,
        probabilities: npt.ArrayLike,
        groups: Sequence[str] | npt.ArrayLike | None = None,
    ) -> npt.NDArray[np.bool_]:
        """Prediction sets for new cases.

        Args:
            probabilities: (N, C) probabilities of the same model.
            groups: (N,) group labels, needed for ``mondrian="group"``; a group not seen in
                calibration uses the marginal threshold.

        Returns:
            (N, C) bool: True where the class is in the case's set.

        Raises:
            ConfigError: wrong shapes, or groups missing for ``mondrian="group"``.
        """
        p = _check_probabilities(probabilities)
        if p.shape[1] != self.n_classes:
            raise ConfigError(f"calibrated for {self.n_classes} classes, got {p.shape[1]}")
        s = class_scores(p, score=self.score, randomized=self.randomized, seed=self.seed + 1)
        if self.mondrian == "none":
            q: npt.NDArray[np.float64] = np.full((p.shape[0], 1), self.threshold)
        elif self.mondrian == "class":
            q = np.array([[self.thresholds[str(c)] for c in range(self.n_classes)]])
        else:
            keys = _check_groups(groups, p.shape[0])
            q = np.array([[self.thresholds.get(k, self.threshold)] for k in keys.tolist()])
            q = q.reshape(p.shape[0], 1)
        sets: npt.NDArray[np.bool_] = s <= q
        return sets

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary (an infinite threshold is written as None)."""
        return {
            "format": CONFORMAL_FORMAT,
            "alpha": self.alpha,
            "score": self.score,
            "mondrian": self.mondrian,
            "randomized": self.randomized,
            "seed": self.seed,
            "n_classes": self.n_classes,
            "threshold": _finite_or_none(self.threshold),
            "thresholds": {k: _finite_or_none(v) for k, v in self.thresholds.items()},
            "counts": dict(self.counts),
            "fallback": list(self.fallback),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConformalClassifier:
        """Rebuild from :meth:`to_dict`.

        Raises:
            ConfigError: a missing key, an unknown score or mondrian, or another format version.
        """
        if data.get("format") != CONFORMAL_FORMAT:
            raise ConfigError(f"conformal format {data.get('format')!r} is not supported")
        if data.get("score") not in get_args(Score) or data.get("mondrian") not in get_args(
            Mondrian
        ):
            raise ConfigError(f"unknown score or mondrian in {dict(data)!r}")
        try:
            return cls(
                alpha=float(data["alpha"]),
                score=cast(Score, data["score"]),
                mondrian=cast(Mondrian, data["mondrian"]),
                randomized=bool(data["randomized"]),
                seed=int(data["seed"]),
                n_classes=int(data["n_classes"]),
                threshold=_none_to_inf(data["threshold"]),
                thresholds={str(k): _none_to_inf(v) for k, v in data["thresholds"].items()},
                counts={str(k): int(v) for k, v in data["counts"].items()},
                fallback=tuple(str(k) for k in data["fallback"]),
            )
        except KeyError as error:
            raise ConfigError(f"conformal dictionary lacks the key {error}") from None


def needs_review(sets: npt.ArrayLike) -> npt.NDArray[np.bool_]:
    """True for each case whose prediction set is not exactly one class ("review").

    Args:
        sets: (N, C) bool prediction sets.

    Returns:
        (N,) bool.

    Raises:
        ConfigError: sets not 2-d.
    """
    m = np.asarray(sets, dtype=bool)
    if m.ndim != 2:
        raise ConfigError(f"sets must have shape (N, C), got {m.shape}")
    review: npt.NDArray[np.bool_] = m.sum(axis=1) != 1
    return review


def _check_groups(groups: Sequence[str] | npt.ArrayLike | None, n: int) -> npt.NDArray[np.str_]:
    if groups is None:
        raise ConfigError('mondrian="group" needs a group label (e.g. the center) per case')
    keys = np.asarray(groups).astype(str)
    if keys.shape != (n,):
        raise ConfigError(f"groups must have shape ({n},), got {keys.shape}")
    return keys


def _finite_or_none(value: float) -> float | None:
    return None if math.isinf(value) else value


def _none_to_inf(value: float | None) -> float:
    return math.inf if value is None else float(value)
