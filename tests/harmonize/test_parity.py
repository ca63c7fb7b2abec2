"""Parity with neuroCombat (Fortin et al., MIT) on the same matrix, to 1e-6.

neuroCombat takes data as (features, samples) and a covariates DataFrame; it is a test-only
dependency (the ``dev`` extra). Its zero-variance handling and its non-parametric underflow are
not exercised here: the matrix has no constant feature and batches small enough that
neuroCombat's direct likelihood product stays finite.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from histoguard.harmonize import Harmonizer, design_from_labels

neuro = pytest.importorskip("neuroCombat", reason="neuroCombat is in the dev extra")
pd = pytest.importorskip("pandas", reason="neuroCombat needs pandas")


def _matrix() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    n, d = 120, 40
    batch = np.array(["a"] * 40 + ["b"] * 50 + ["c"] * 30)
    y = rng.integers(0, 3, n)
    age = np.round(rng.uniform(20, 80, n))  # whole numbers: exact in neuroCombat's float32
    x = rng.normal(size=(n, d)) + 0.5 * y[:, None] + 0.02 * age[:, None]
    x[batch == "b"] += 2.0
    x[batch == "c"] = x[batch == "c"] * 1.7 + rng.normal(size=d)
    return x, batch, y, age


@pytest.mark.parametrize("parametric", [True, False], ids=["parametric", "non-parametric"])
@pytest.mark.parametrize("covariates", ["none", "categorical", "categorical+continuous"])
def test_matches_neurocombat(parametric: bool, covariates: str) -> None:
    x, batch, y, age = _matrix()
    frame = pd.DataFrame({"batch": batch, "y": y, "age": age})
    categorical = ["y"] if covariates != "none" else None
    continuous = ["age"] if covariates.endswith("continuous") else None
    with contextlib.redirect_stdout(io.StringIO()):  # neuroCombat prints its progress
        reference = neuro.neuroCombat(
            x.T.copy(),
            frame,
            "batch",
            categorical_cols=categorical,
            continuous_cols=continuous,
            parametric=parametric,
        )
    design = []
    if categorical:
        design.append(design_from_labels(y))
    if continuous:
        design.append(age[:, None])
    cov = np.hstack(design) if design else None
    h = Harmonizer(parametric=parametric)
    out = h.fit_transform(x, batch, cov)
    np.testing.assert_allclose(out, reference["data"].T, rtol=0, atol=1e-6)
    estimates = reference["estimates"]
    assert h.state is not None
    np.testing.assert_allclose(h.state.gamma, estimates["gamma.star"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(h.state.delta, estimates["delta.star"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(h.state.var_pooled, estimates["var.pooled"][:, 0], atol=1e-6)
    # and the fitted correction, applied again to the training rows, gives the same
    np.testing.assert_allclose(h.transform(x, batch, cov), out, rtol=0, atol=1e-9)
