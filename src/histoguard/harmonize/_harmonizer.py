"""The :class:`Harmonizer`: ComBat and CovBat fitted on training centers, applied to any
features of a known center, and extended label-free to a new center."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import numpy.typing as npt

from histoguard.errors import ConfigError, TooFewSlidesError, UnknownCenterError
from histoguard.harmonize._combat import FloatArray, batch_effects, standardise

Method = Literal["combat", "covbat"]
#: Default fewest slides of a new center for :meth:`Harmonizer.fit_new_center`: below about 20
#: the per-feature means and variances of a center, and their empirical-Bayes priors, are too
#: noisy to remove a batch effect rather than add one.
MIN_NEW_CENTER_SLIDES = 20
#: Default tiles per slide (a seeded sample, :func:`tile_sample`) a fit on tile features reads.
FIT_TILES_PER_SLIDE = 256
#: A feature whose variance within a training center is at most this share of its overall
#: variance (e.g. a ReLU unit that is always 0 at one hospital) is constant there: any
#: per-center location / scale map keeps it constant, so it would stay a perfect marker of
#: that center. Such features are neutralised (set to the training mean for every row).
CONSTANT_VARIANCE = 1e-10
#: CovBat keeps the principal components of the ComBat residuals that explain this share of
#: their variance (Chen et al. 2022's default).
COVBAT_PERCENT_VAR = 0.95


@dataclass(frozen=True)
class CovBatPart:
    """CovBat's second stage: ComBat on the top principal-component scores of the residuals.

    Attributes:
        center: (D,) mean of the training residuals.
        scale: (D,) their standard deviation (ddof 1; ones when not scaled).
        components: (D, k) the top k principal axes (orthonormal columns).
        score_mean: (k,) grand mean of the training scores.
        score_var: (k,) pooled variance of the training scores.
        score_gamma: (B, k) per-center location of the standardised scores.
        score_delta: (B, k) per-center scale of the standardised scores.
    """

    center: FloatArray
    scale: FloatArray
    components: FloatArray
    score_mean: FloatArray
    score_var: FloatArray
    score_gamma: FloatArray
    score_delta: FloatArray


@dataclass(frozen=True)
class HarmonizerState:
    """Everything a fitted :class:`Harmonizer` applies (D features, B centers, K covariates).

    Attributes:
        centers: the B center names; row ``b`` of ``gamma`` / ``delta`` is ``centers[b]``.
        label_free: the centers added by :meth:`Harmonizer.fit_new_center`.
        n_rows: per center, how many rows (tiles or slides) its estimates came from.
        grand_mean: (D,) intercept of the pooled model.
        var_pooled: (D,) pooled residual variance.
        beta: (K, D) covariate effects (K = 0 without covariates).
        mean_covariate_effect: (D,) average covariate effect of the training rows.
        gamma: (B, D) per-center location (standardised units).
        delta: (B, D) per-center scale (standardised variance units).
        covbat: the CovBat stage, or None for plain ComBat.
        neutral: (D,) True for features constant within some training center, which no
            per-center location / scale can align: they are set to their training mean for
            every row (see :data:`CONSTANT_VARIANCE`); None when there were none.
    """

    centers: tuple[str, ...]
    label_free: tuple[str, ...]
    n_rows: tuple[int, ...]
    grand_mean: FloatArray
    var_pooled: FloatArray
    beta: FloatArray
    mean_covariate_effect: FloatArray
    gamma: FloatArray
    delta: FloatArray
    covbat: CovBatPart | None = None
    neutral: npt.NDArray[np.bool_] | None = None


@dataclass
class Harmonizer:
    """Remove center (batch) effects from embeddings with ComBat or CovBat.

    Fit on the training centers only; :meth:`transform` then applies the fitted correction to
    any features of a known center, and :meth:`fit_new_center` adds a center the fit never saw
    from its own unlabelled features.

    Args:
        method: ``"combat"`` (per-feature location and scale; Johnson et al. 2007) or
            ``"covbat"`` (ComBat, then ComBat on the top principal-component scores of the
            residuals, which also aligns the covariance; Chen et al. 2022).
        parametric: parametric (True) or non-parametric (False) empirical Bayes.
        eb: shrink the per-center estimates by empirical Bayes; False uses raw estimates.
        mean_only: remove only the location effect.
        percent_var: CovBat: keep the components explaining more than this share of variance.
        n_pc: CovBat: keep exactly this many components instead (overrides ``percent_var``).
        scale_pcs: CovBat: standardise the residual features before the PCA (as CovBat's
            default ``std.var``).
        score_eb: CovBat: empirical Bayes on the scores (False, CovBat's default, uses raw
            location / scale).
        score_parametric: CovBat: parametric empirical Bayes on the scores when ``score_eb``.

    Example:
        >>> h = Harmonizer(method="combat").fit(train_x, train_centers, covariates)
        >>> harmonised = h.transform(test_x, test_centers)
    """

    method: Method = "combat"
    parametric: bool = True
    eb: bool = True
    mean_only: bool = False
    percent_var: float = COVBAT_PERCENT_VAR
    n_pc: int | None = None
    scale_pcs: bool = True
    score_eb: bool = False
    score_parametric: bool = True
    state: HarmonizerState | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.method not in ("combat", "covbat"):
            raise ConfigError(f"method must be 'combat' or 'covbat', not {self.method!r}")
        if not 0.0 < self.percent_var <= 1.0:
            raise ConfigError(f"percent_var must be in (0, 1], not {self.percent_var}")
        if self.n_pc is not None and self.n_pc < 1:
            raise ConfigError(f"n_pc must be a positive number of components, not {self.n_pc}")

    # --- fitting ------------------------------------------------------------------------------

    def fit(
        self,
        features: npt.ArrayLike,
        batch: Sequence[str] | npt.ArrayLike,
        covariates: npt.ArrayLike | None = None,
        *,
        method: Method | None = None,
        parametric: bool | None = None,
    ) -> Harmonizer:
        """Fit on the training centers' features; returns ``self``.

        Args:
            features: (N, D) training embeddings (tiles or slides).
            batch: (N,) the center of each row; every center needs at least 2 rows.
            covariates: (N, K) biological covariates to preserve (e.g.
                :func:`design_from_labels` of the training labels), or None. Training rows
                only: the labels of held-out data must never be given here.
            method: overrides the constructor's ``method``.
            parametric: overrides the constructor's ``parametric``.

        Raises:
            ConfigError: shapes disagree, values are not finite, a center has fewer than 2
                rows, or the covariates are confounded with the centers.
        """
        if method is not None:
            self.method = method
        if parametric is not None:
            self.parametric = parametric
        self.__post_init__()
        self.state, _ = self._fit(features, batch, covariates)
        return self

    def fit_transform(
        self,
        features: npt.ArrayLike,
        batch: Sequence[str] | npt.ArrayLike,
        covariates: npt.ArrayLike | None = None,
    ) -> FloatArray:
        """Fit, and return the harmonised training features (N, D), covariate effects kept
        exactly (neuroCombat's output)."""
        self.state, harmonised = self._fit(features, batch, covariates)
        return harmonised

    def _fit(
        self,
        features: npt.ArrayLike,
        batch: Sequence[str] | npt.ArrayLike,
        covariates: npt.ArrayLike | None,
    ) -> tuple[HarmonizerState, FloatArray]:
        x = _features(features)
        names = _batch(batch, x.shape[0])
        cov = _covariates(covariates, x.shape[0])
        neutral = _constant_within_a_center(x, names)
        if not neutral.any():
            return self._fit_features(x, names, cov)
        warnings.warn(
            f"{int(neutral.sum())} of {x.shape[1]} features are constant within a training "
            "center (e.g. always 0 at one hospital): no per-center location / scale can align "
            "them, so they are set to their training mean for every row",
            UserWarning,
            stacklevel=3,
        )
        state, harmonised = self._fit_features(x[:, ~neutral], names, cov)
        column_mean = x.mean(axis=0)
        full = np.empty_like(x)
        full[:, ~neutral] = harmonised
        full[:, neutral] = column_mean[neutral]
        return _expanded(state, neutral, column_mean), full

    def _fit_features(
        self, x: FloatArray, names: npt.NDArray[np.str_], cov: FloatArray
    ) -> tuple[HarmonizerState, FloatArray]:
        centers, index = np.unique(names, return_inverse=True)
        counts = np.bincount(index, minlength=centers.size)
        if np.any(counts < 2):
            few = [str(c) for c, n in zip(centers, counts, strict=True) if n < 2]
            raise ConfigError(f"centers {few} have fewer than 2 rows; ComBat needs a variance")
        design = np.hstack([np.eye(centers.size)[index], cov])
        if np.linalg.matrix_rank(design) < design.shape[1]:
            raise ConfigError(
                "the covariates are confounded with the centers (the design is rank-deficient): "
                "a covariate constant within each center cannot be told apart from the center "
                "effect; drop it, or fit without covariates"
            )
        fit = standardise(x, index, centers.size, cov)
        gamma = np.empty((centers.size, x.shape[1]))
        delta = np.empty_like(gamma)
        for b in range(centers.size):
            gamma[b], delta[b] = batch_effects(
                fit.data[index == b],
                eb=self.eb,
                parametric=self.parametric,
                mean_only=self.mean_only,
            )
        residual = (fit.data - gamma[index]) / np.sqrt(delta[index]) * np.sqrt(fit.var_pooled)
        state = HarmonizerState(
            centers=tuple(str(c) for c in centers),
            label_free=(),
            n_rows=tuple(int(n) for n in counts),
            grand_mean=fit.grand_mean,
            var_pooled=fit.var_pooled,
            beta=fit.beta,
            mean_covariate_effect=fit.mean_covariate_effect,
            gamma=gamma,
            delta=delta,
        )
        if self.method == "covbat":
            part, residual = self._fit_covbat(residual, index, centers.size)
            state = replace(state, covbat=part)
        return state, residual + fit.grand_mean + cov @ fit.beta

    def _fit_covbat(
        self, residual: FloatArray, index: npt.NDArray[np.int64], n_batches: int
    ) -> tuple[CovBatPart, FloatArray]:
        center = residual.mean(axis=0)
        scale = residual.std(axis=0, ddof=1) if self.scale_pcs else np.ones(residual.shape[1])
        scale[scale == 0] = 1.0
        z = (residual - center) / scale
        _, singular, vt = np.linalg.svd(z, full_matrices=False)
        explained = np.cumsum(singular**2) / np.sum(singular**2)
        enough = np.flatnonzero(explained > self.percent_var - 1e-12)
        k = int(enough[0]) + 1 if enough.size else vt.shape[0]
        k = min(self.n_pc if self.n_pc is not None else k, vt.shape[0])
        components = vt[:k].T
        scores = z @ components
        fit = standardise(scores, index, n_batches, np.zeros((scores.shape[0], 0)))
        gamma = np.empty((n_batches, k))
        delta = np.empty_like(gamma)
        for b in range(n_batches):
            gamma[b], delta[b] = batch_effects(
                fit.data[index == b], eb=self.score_eb, parametric=self.score_parametric
            )
        part = CovBatPart(
            center=center,
            scale=scale,
            components=components,
            score_mean=fit.grand_mean,
            score_var=fit.var_pooled,
            score_gamma=gamma,
            score_delta=delta,
        )
        return part, _apply_covbat(part, residual, index)

    def fit_new_center(
        self,
        features: npt.ArrayLike,
        name: str,
        *,
        slides: Sequence[str] | npt.ArrayLike | None = None,
        min_slides: int = MIN_NEW_CENTER_SLIDES,
    ) -> Harmonizer:
        """Add a center the fit never saw, from its own unlabelled features; returns ``self``.

        The center's location and scale are estimated from ``features`` alone, standardised
        with the training fit (its covariates at their training average), and shrunk as in
        :meth:`fit`. No label is read (there is no parameter for one). Because the center's
        mean is removed whatever causes it, a center whose class mix differs from the training
        centers' loses part of its biology: a :class:`UserWarning` says so on every call.

        Args:
            features: (n, D) the new center's embeddings (tiles or slides).
            name: the new center's name (not one of the fitted centers).
            slides: (n,) the slide of each row when rows are tiles; None when each row is a
                slide.
            min_slides: fewest distinct slides accepted (default
                :data:`MIN_NEW_CENTER_SLIDES`).

        Raises:
            TooFewSlidesError: fewer than ``min_slides`` slides.
            ConfigError: not fitted, ``name`` is already a center, or the features do not fit.
        """
        state = self._fitted()
        if name in state.centers:
            raise ConfigError(
                f"center {name!r} is already fitted; label-free estimates would replace the "
                f"fitted ones: give the new center another name"
            )
        x = _features(features, state.grand_mean.size)
        if x.shape[0] < 2:
            raise TooFewSlidesError(name, x.shape[0], max(2, min_slides))
        n_slides = x.shape[0] if slides is None else np.unique(_batch(slides, x.shape[0])).size
        if n_slides < min_slides:
            raise TooFewSlidesError(name, int(n_slides), min_slides)
        warnings.warn(
            f"center {name!r} is harmonised label-free from {n_slides} slides: its mean and "
            "scale are removed whatever their cause, so if its class mix differs from the "
            "training centers' part of the biology is removed too; compare the class "
            "balance, or a biological readout, before and after",
            UserWarning,
            stacklevel=2,
        )
        s = (x - state.grand_mean - state.mean_covariate_effect) / np.sqrt(state.var_pooled)
        gamma, delta = batch_effects(
            s, eb=self.eb, parametric=self.parametric, mean_only=self.mean_only
        )
        if state.neutral is not None:
            gamma[state.neutral], delta[state.neutral] = 0.0, 1.0
        covbat = state.covbat
        if covbat is not None:
            residual = (s - gamma) / np.sqrt(delta) * np.sqrt(state.var_pooled)
            scores = ((residual - covbat.center) / covbat.scale) @ covbat.components
            standard = (scores - covbat.score_mean) / np.sqrt(covbat.score_var)
            score_gamma, score_delta = batch_effects(
                standard, eb=self.score_eb, parametric=self.score_parametric
            )
            covbat = replace(
                covbat,
                score_gamma=np.vstack([covbat.score_gamma, score_gamma]),
                score_delta=np.vstack([covbat.score_delta, score_delta]),
            )
        self.state = replace(
            state,
            centers=(*state.centers, name),
            label_free=(*state.label_free, name),
            n_rows=(*state.n_rows, int(x.shape[0])),
            gamma=np.vstack([state.gamma, gamma]),
            delta=np.vstack([state.delta, delta]),
            covbat=covbat,
        )
        return self

    # --- applying -----------------------------------------------------------------------------

    def transform(
        self,
        features: npt.ArrayLike,
        batch: Sequence[str] | npt.ArrayLike,
        covariates: npt.ArrayLike | None = None,
    ) -> FloatArray:
        """Harmonise features of known centers.

        Args:
            features: (n, D) embeddings.
            batch: (n,) their centers, each fitted (or added by :meth:`fit_new_center`).
            covariates: (n, K) their covariates when known (training rows: then the result
                equals :meth:`fit_transform`'s); None (predict time) uses the training
                average, as neuroCombat's ``neuroCombatFromTraining`` does.

        Returns:
            (n, D) float64 harmonised features.

        Raises:
            UnknownCenterError: a center that was never fitted; the message names the fix.
            ConfigError: not fitted, or shapes / values do not fit.
        """
        state = self._fitted()
        x = _features(features, state.grand_mean.size)
        names = _batch(batch, x.shape[0])
        lookup = {c: i for i, c in enumerate(state.centers)}
        for unknown in sorted(set(names.tolist()) - set(lookup)):
            raise UnknownCenterError(unknown, state.centers)
        index = np.array([lookup[c] for c in names.tolist()], dtype=np.int64)
        if covariates is None:
            effect = np.broadcast_to(state.mean_covariate_effect, x.shape)
        else:
            cov = _covariates(covariates, x.shape[0])
            if cov.shape[1] != state.beta.shape[0]:
                raise ConfigError(
                    f"covariates have {cov.shape[1]} columns, the harmoniser was fitted with "
                    f"{state.beta.shape[0]}"
                )
            effect = cov @ state.beta
        sd = np.sqrt(state.var_pooled)
        s = (x - state.grand_mean - effect) / sd
        residual = (s - state.gamma[index]) / np.sqrt(state.delta[index]) * sd
        if state.covbat is not None:
            residual = _apply_covbat(state.covbat, residual, index)
        out = np.asarray(residual + state.grand_mean + effect, dtype=np.float64)
        if state.neutral is not None:
            out[:, state.neutral] = state.grand_mean[state.neutral]
        return out

    def affine(self, center: str) -> tuple[FloatArray, FloatArray]:
        """The transform of ``center``'s features without covariates, as ``x @ matrix + offset``.

        Without covariates (predict time) both ComBat and CovBat are affine in the features,
        so the map is read off the transform of the origin and of the unit vectors. A slide
        model applies it in torch (with gradients) instead of calling :meth:`transform`.

        Returns:
            ``matrix (D, D)`` and ``offset (D,)`` float64; for ComBat the matrix is diagonal.

        Raises:
            UnknownCenterError: ``center`` was never fitted.
        """
        state = self._fitted()
        if center not in state.centers:
            raise UnknownCenterError(center, state.centers)
        n = state.grand_mean.size
        # Unit vectors scaled to the features' spread keep the difference well conditioned.
        step = np.sqrt(state.var_pooled)
        probe = np.vstack([state.grand_mean, state.grand_mean + np.diag(step)])
        out = self.transform(probe, [center] * (n + 1))
        offset_at_mean = out[0]
        matrix = (out[1:] - offset_at_mean) / step[:, None]
        return matrix, offset_at_mean - state.grand_mean @ matrix

    @property
    def centers(self) -> tuple[str, ...]:
        """The centers this harmoniser can transform (training, then label-free ones)."""
        return self._fitted().centers

    def _fitted(self) -> HarmonizerState:
        if self.state is None:
            raise ConfigError("the harmoniser is not fitted; call fit(features, batch) first")
        return self.state


def _constant_within_a_center(x: FloatArray, names: npt.NDArray[np.str_]) -> npt.NDArray[np.bool_]:
    """(D,) True for features whose variance in some center is at most
    :data:`CONSTANT_VARIANCE` of their overall variance (or that are constant overall)."""
    overall = x.var(axis=0)
    constant = overall <= 0
    for center in np.unique(names):
        constant |= x[names == center].var(axis=0) <= CONSTANT_VARIANCE * overall
    return np.asarray(constant)


def _expanded(
    state: HarmonizerState, neutral: npt.NDArray[np.bool_], column_mean: FloatArray
) -> HarmonizerState:
    """A state fitted on the features ``~neutral``, widened to all D: neutral features get no
    center effect, no covariate effect and no CovBat loading, and the training mean."""
    keep = ~neutral

    def widen(values: FloatArray, fill: float) -> FloatArray:
        out = np.full((*values.shape[:-1], neutral.size), fill)
        out[..., keep] = values
        return out

    grand_mean = widen(state.grand_mean, 0.0)
    grand_mean[neutral] = column_mean[neutral]
    covbat = state.covbat
    if covbat is not None:
        components = np.zeros((neutral.size, covbat.components.shape[1]))
        components[keep] = covbat.components
        covbat = replace(
            covbat,
            center=widen(covbat.center, 0.0),
            scale=widen(covbat.scale, 1.0),
            components=components,
        )
    return replace(
        state,
        grand_mean=grand_mean,
        var_pooled=widen(state.var_pooled, 1.0),
        beta=widen(state.beta, 0.0),
        mean_covariate_effect=widen(state.mean_covariate_effect, 0.0),
        gamma=widen(state.gamma, 0.0),
        delta=widen(state.delta, 1.0),
        covbat=covbat,
        neutral=neutral.copy(),
    )


def _apply_covbat(
    part: CovBatPart, residual: FloatArray, index: npt.NDArray[np.int64]
) -> FloatArray:
    """Align the top principal-component scores of ComBat residuals (n, D) per center."""
    z = (residual - part.center) / part.scale
    scores = z @ part.components
    sd = np.sqrt(part.score_var)
    standard = (scores - part.score_mean) / sd
    aligned = (standard - part.score_gamma[index]) / np.sqrt(part.score_delta[index])
    new_scores = aligned * sd + part.score_mean
    # Only the top-k subspace changes: rows outside the training span keep their complement.
    z = z + (new_scores - scores) @ part.components.T
    return np.asarray(z * part.scale + part.center, dtype=np.float64)


def tile_sample(features: FloatArray, max_tiles: int, rng: np.random.Generator) -> FloatArray:
    """At most ``max_tiles`` rows of one slide's ``(N, D)`` tile features, a seeded sample kept
    in row order, so that every slide weighs about the same in a fit."""
    if len(features) <= max_tiles:
        return features
    return features[np.sort(rng.choice(len(features), size=max_tiles, replace=False))]


def design_from_labels(
    labels: Sequence[object] | npt.ArrayLike, classes: Sequence[object] | None = None
) -> FloatArray:
    """Covariate design of categorical labels: one-hot without the first class.

    Args:
        labels: (N,) class of each row.
        classes: the classes in order (default: the sorted distinct labels); give the training
            classes when encoding other rows, so the columns agree.

    Returns:
        (N, C - 1) float64 indicator columns (neuroCombat's ``categorical_cols`` encoding).

    Raises:
        ConfigError: a label not in ``classes``.
    """
    values = np.asarray(labels)
    order = list(np.unique(values)) if classes is None else list(classes)
    lookup = {c: i for i, c in enumerate(order)}
    missing = sorted({str(v) for v in values.tolist() if v not in lookup})
    if missing:
        raise ConfigError(f"labels {missing} are not among the classes {order}")
    onehot = np.zeros((values.size, len(order)))
    onehot[np.arange(values.size), [lookup[v] for v in values.tolist()]] = 1.0
    return onehot[:, 1:]


def _features(features: npt.ArrayLike, n_features: int | None = None) -> FloatArray:
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ConfigError(f"features must be a (rows, features) matrix, got shape {x.shape}")
    if n_features is not None and x.shape[1] != n_features:
        raise ConfigError(
            f"features have {x.shape[1]} columns, the harmoniser was fitted on {n_features}: "
            "use features of the same encoder"
        )
    if not np.all(np.isfinite(x)):
        raise ConfigError("features hold NaN or infinite values; ComBat needs finite features")
    return x


def _batch(batch: Sequence[str] | npt.ArrayLike, n: int) -> npt.NDArray[np.str_]:
    names = np.asarray(batch).astype(str)
    if names.shape != (n,):
        raise ConfigError(f"expected one center (or slide) per row: {n}, got shape {names.shape}")
    return names


def _covariates(covariates: npt.ArrayLike | None, n: int) -> FloatArray:
    if covariates is None:
        return np.zeros((n, 0))
    cov = np.asarray(covariates, dtype=np.float64)
    if cov.ndim == 1:
        cov = cov[:, None]
    if cov.ndim != 2 or cov.shape[0] != n:
        raise ConfigError(f"covariates must be ({n}, K), got shape {cov.shape}")
    if not np.all(np.isfinite(cov)):
        raise ConfigError("covariates hold NaN or infinite values")
    return cov
