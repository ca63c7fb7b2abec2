"""The ComBat equations (Johnson, Li & Rabinovic, Biostatistics 2007), on (samples, features).

Model, for sample ``i`` of batch (center) ``b`` and feature ``g``::

    x[i, g] = alpha[g] + C[i] @ beta[:, g] + gamma[b, g] + sqrt(delta[b, g]) * eps[i, g]

``alpha + C @ beta`` is the biology to keep (``C``: the covariates), ``gamma`` and ``delta`` the
additive and multiplicative batch effects to remove. The data are standardised feature-wise with
the pooled fit, the per-batch location / scale are estimated and shrunk towards their batch's
across-feature prior by empirical Bayes (parametric: normal / inverse-gamma priors, iterated to
a fixed point; non-parametric: a likelihood-weighted average over the other features), and
removed. Every step follows neuroCombat (Fortin et al., MIT), which the tests match to 1e-6;
the non-parametric weights are computed in log space, which changes nothing where neuroCombat's
direct product is finite and avoids its underflow to NaN for large batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

#: The parametric fixed-point iteration stops when no estimate moves by more than this,
#: relatively (neuroCombat's and sva's value).
CONVERGENCE = 1e-4
_MAX_ITERATIONS = 10_000


@dataclass(frozen=True)
class Standardised:
    """The pooled fit of a ComBat model.

    Attributes:
        grand_mean: (D,) the intercept, the batch means weighted by batch size.
        var_pooled: (D,) the pooled residual variance (zero variances set to 1).
        beta: (K, D) the covariate effects.
        mean_covariate_effect: (D,) the average covariate effect over the fitted samples, used
            when the covariates of new samples are unknown.
        data: (N, D) the standardised data.
    """

    grand_mean: FloatArray
    var_pooled: FloatArray
    beta: FloatArray
    mean_covariate_effect: FloatArray
    data: FloatArray


def standardise(
    x: FloatArray, batch_index: npt.NDArray[np.int64], n_batches: int, covariates: FloatArray
) -> Standardised:
    """Fit the pooled linear model and standardise.

    Args:
        x: (N, D) data.
        batch_index: (N,) batch of each sample, in ``0 .. n_batches - 1``.
        n_batches: number of batches.
        covariates: (N, K) covariate design (K may be 0), without an intercept column.
    """
    n = x.shape[0]
    onehot = np.zeros((n, n_batches))
    onehot[np.arange(n), batch_index] = 1.0
    design = np.hstack([onehot, covariates])
    coefficients = np.linalg.solve(design.T @ design, design.T @ x)  # (B + K, D)
    counts = np.bincount(batch_index, minlength=n_batches).astype(np.float64)
    grand_mean = (counts / n) @ coefficients[:n_batches]
    var_pooled = np.mean((x - design @ coefficients) ** 2, axis=0)
    var_pooled[var_pooled == 0] = 1.0
    beta = coefficients[n_batches:]
    effect = covariates @ beta
    data = (x - grand_mean - effect) / np.sqrt(var_pooled)
    return Standardised(
        grand_mean=grand_mean,
        var_pooled=var_pooled,
        beta=beta,
        mean_covariate_effect=effect.mean(axis=0) if n else np.zeros(x.shape[1]),
        data=data,
    )


def location_scale(s: FloatArray) -> tuple[FloatArray, FloatArray]:
    """The raw batch effects of one batch's standardised data ``s`` (n, D): (D,) means and
    (D,) variances (ddof 1; a zero variance becomes 1)."""
    gamma_hat = s.mean(axis=0)
    delta_hat = s.var(axis=0, ddof=1)
    delta_hat[delta_hat == 0] = 1.0
    return gamma_hat, delta_hat


def _inverse_gamma_prior(delta_hat: FloatArray) -> tuple[float, float]:
    """Method-of-moments (a, b) of the inverse-gamma prior of one batch's variances."""
    m = float(np.mean(delta_hat))
    s2 = float(np.var(delta_hat, ddof=1))
    return (2 * s2 + m**2) / s2, (m * s2 + m**3) / s2


def parametric_eb(
    s: FloatArray, gamma_hat: FloatArray, delta_hat: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """Parametric empirical-Bayes estimates (gamma*, delta*), each (D,), of one batch.

    Priors: gamma ~ N(gamma_bar, tau2) and delta ~ InvGamma(a, b), estimated across the batch's
    features; the posterior means are iterated to a fixed point (relative change
    < :data:`CONVERGENCE`).

    Args:
        s: (n, D) the batch's standardised data.
        gamma_hat: (D,) its raw means.
        delta_hat: (D,) its raw variances.
    """
    n = float(s.shape[0])
    gamma_bar = float(np.mean(gamma_hat))
    tau2 = float(np.var(gamma_hat, ddof=1))
    a, b = _inverse_gamma_prior(delta_hat)
    g_old, d_old = gamma_hat.copy(), delta_hat.copy()
    with np.errstate(divide="ignore", invalid="ignore"):
        for _ in range(_MAX_ITERATIONS):
            g_new = (tau2 * n * gamma_hat + d_old * gamma_bar) / (tau2 * n + d_old)
            sum2 = ((s - g_new) ** 2).sum(axis=0)
            d_new = (0.5 * sum2 + b) / (n / 2.0 + a - 1.0)
            change = max(
                np.nanmax(np.abs(g_new - g_old) / g_old), np.nanmax(np.abs(d_new - d_old) / d_old)
            )
            g_old, d_old = g_new, d_new
            if not change > CONVERGENCE:
                break
    return g_old, d_old


def nonparametric_eb(
    s: FloatArray, gamma_hat: FloatArray, delta_hat: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """Non-parametric empirical-Bayes estimates (gamma*, delta*), each (D,), of one batch.

    For feature ``g``, the other features' raw (gamma_j, delta_j) form the empirical prior; each
    is weighted by the normal likelihood of ``g``'s data under it, and gamma*, delta* are the
    weighted means (Johnson et al. 2007, section 3.2).

    Args:
        s: (n, D) the batch's standardised data.
        gamma_hat: (D,) its raw means.
        delta_hat: (D,) its raw variances.
    """
    n = s.shape[0]
    # sum_k (s[k, g] - gamma_j)^2 = SS_g + n (mean_g - gamma_j)^2, exact and better conditioned
    # than expanding the square.
    mean = s.mean(axis=0)
    ss = ((s - mean) ** 2).sum(axis=0)
    gamma_star = np.empty_like(gamma_hat)
    delta_star = np.empty_like(delta_hat)
    log_norm = -0.5 * n * np.log(2 * np.pi * delta_hat)  # (D,) over j
    step = max(1, 2**22 // max(1, gamma_hat.size))  # rows per chunk: ~32 MB of float64
    for start in range(0, gamma_hat.size, step):
        rows = slice(start, min(start + step, gamma_hat.size))
        sum2 = ss[rows, None] + n * (mean[rows, None] - gamma_hat[None, :]) ** 2
        log_lh = log_norm[None, :] - sum2 / (2 * delta_hat[None, :])
        own = np.arange(rows.start, rows.stop)
        log_lh[own - rows.start, own] = -np.inf  # a feature is not its own prior
        log_lh -= log_lh.max(axis=1, keepdims=True)
        weights = np.exp(log_lh)
        weights /= weights.sum(axis=1, keepdims=True)
        gamma_star[rows] = weights @ gamma_hat
        delta_star[rows] = weights @ delta_hat
    return gamma_star, delta_star


def batch_effects(
    s: FloatArray, *, eb: bool, parametric: bool, mean_only: bool = False
) -> tuple[FloatArray, FloatArray]:
    """The (gamma*, delta*) of one batch's standardised data ``s`` (n, D), each (D,).

    Args:
        s: (n, D) standardised data of one batch (n >= 2).
        eb: shrink by empirical Bayes; False uses the raw means and variances.
        parametric: parametric (True) or non-parametric (False) empirical Bayes.
        mean_only: remove the location only (delta* = 1).
    """
    gamma_hat, delta_hat = location_scale(s)
    if mean_only:
        delta_hat = np.ones_like(delta_hat)
    if not eb:
        return gamma_hat, delta_hat
    if mean_only and parametric:
        tau2 = float(np.var(gamma_hat, ddof=1))
        gamma_bar = float(np.mean(gamma_hat))
        return (tau2 * gamma_hat + gamma_bar) / (tau2 + 1.0), delta_hat
    if parametric:
        return parametric_eb(s, gamma_hat, delta_hat)
    gamma_star, delta_star = nonparametric_eb(s, gamma_hat, delta_hat)
    return gamma_star, (delta_hat if mean_only else delta_star)
