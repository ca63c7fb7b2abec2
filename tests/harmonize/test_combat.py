"""ComBat and CovBat remove known center effects and keep the biology asked for."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest

from histoguard.errors import ConfigError, TooFewSlidesError, UnknownCenterError
from histoguard.harmonize import Harmonizer, design_from_labels

from .conftest import Centers, make_centers


def _center_gap(x: np.ndarray, batch: np.ndarray, y: np.ndarray | None = None) -> float:
    """Mean per-feature spread of the center means within a class (the class mix differs by
    center, and its effect must stay), in pooled standard deviations."""
    groups = [np.ones(len(x), bool)] if y is None else [y == k for k in np.unique(y)]
    gaps = []
    for rows in groups:
        means = np.stack([x[rows & (batch == c)].mean(axis=0) for c in np.unique(batch)])
        gaps.append(np.mean((means.max(axis=0) - means.min(axis=0)) / x.std(axis=0)))
    return float(np.mean(gaps))


def _class_effect(x: np.ndarray, y: np.ndarray, batch: np.ndarray) -> np.ndarray:
    """(D,) class-1 minus class-0 mean, within centers, averaged over centers."""
    per_center = [
        x[(batch == c) & (y == 1)].mean(axis=0) - x[(batch == c) & (y == 0)].mean(axis=0)
        for c in np.unique(batch)
    ]
    return np.mean(per_center, axis=0)


@pytest.mark.parametrize("method", ["combat", "covbat"])
@pytest.mark.parametrize("parametric", [True, False])
def test_removes_the_center_and_keeps_the_class(
    centers: Centers, method: str, parametric: bool
) -> None:
    h = Harmonizer(method=method, parametric=parametric)  # type: ignore[arg-type]
    out = h.fit_transform(centers.x, centers.batch, design_from_labels(centers.y))
    before, after = (_center_gap(z, centers.batch, centers.y) for z in (centers.x, out))
    assert before > 1.0  # the synthetic effect is there
    assert after < 0.3 * before
    kept = _class_effect(out, centers.y, centers.batch)
    # The within-center class effect survives (rescaled per feature, not removed).
    correlation = np.corrcoef(kept, centers.class_effect)[0, 1]
    assert correlation > 0.9
    assert np.median(np.abs(kept)) > 0.5 * np.median(np.abs(centers.class_effect))


def test_without_covariates_the_class_mix_leaks_into_the_correction() -> None:
    """Centers with different class shares: ComBat without the class as covariate removes part
    of the class effect with the center effect; with it, the class effect is kept better."""
    data = make_centers(seed=3, class_share=(0.15, 0.85, 0.5))
    with_cov = Harmonizer().fit_transform(data.x, data.batch, design_from_labels(data.y))
    without = Harmonizer().fit_transform(data.x, data.batch)

    def pooled_effect(x: np.ndarray) -> float:
        diff = x[data.y == 1].mean(axis=0) - x[data.y == 0].mean(axis=0)
        return float(np.dot(diff, data.class_effect) / np.dot(data.class_effect, data.class_effect))

    assert pooled_effect(with_cov) > pooled_effect(without) + 0.1


def test_transform_of_training_rows_equals_fit_transform(centers: Centers) -> None:
    for method in ("combat", "covbat"):
        h = Harmonizer(method=method)  # type: ignore[arg-type]
        cov = design_from_labels(centers.y)
        out = h.fit_transform(centers.x, centers.batch, cov)
        np.testing.assert_allclose(h.transform(centers.x, centers.batch, cov), out, atol=1e-10)
        # without covariates: the training average effect, a small difference only
        approx = h.transform(centers.x, centers.batch)
        assert np.abs(approx - out).mean() < 0.3 * np.abs(out - centers.x).mean()


def test_covbat_aligns_covariance_better_than_combat() -> None:
    """Centers that scale the variance along shared oblique axes: invisible to per-feature
    ComBat, the pattern CovBat is built for."""
    rng = np.random.default_rng(5)
    n, d = 1000, 12
    axes = np.linalg.qr(rng.normal(size=(d, d)))[0]
    base = np.linspace(3.0, 0.5, d)
    spread = [base * rng.uniform(0.4, 2.5, d) for _ in range(2)]
    x = np.vstack([(rng.normal(size=(n, d)) * s) @ axes.T for s in spread])
    batch = np.array(["a"] * n + ["b"] * n)

    def cov_gap(z: np.ndarray) -> float:
        ca, cb = np.cov(z[batch == "a"].T), np.cov(z[batch == "b"].T)
        return float(np.linalg.norm(ca - cb) / np.linalg.norm(ca + cb))

    combat = cov_gap(Harmonizer(method="combat").fit_transform(x, batch))
    covbat = cov_gap(Harmonizer(method="covbat").fit_transform(x, batch))
    unscaled = cov_gap(Harmonizer(method="covbat", scale_pcs=False).fit_transform(x, batch))
    assert covbat < 0.95 * combat
    assert unscaled < 0.7 * combat  # PCA on unscaled residuals finds the shared axes


def test_unknown_center_names_the_label_free_fix(centers: Centers) -> None:
    h = Harmonizer().fit(centers.x, centers.batch)
    with pytest.raises(UnknownCenterError, match="fit_new_center") as caught:
        h.transform(centers.x[:3], ["elsewhere"] * 3)
    assert isinstance(caught.value, ConfigError) and caught.value.center == "elsewhere"


def test_bad_inputs_are_refused(centers: Centers) -> None:
    with pytest.raises(ConfigError, match="confounded"):
        Harmonizer().fit(centers.x, centers.batch, (centers.batch == "center0").astype(float))
    with pytest.raises(ConfigError, match="fewer than 2"):
        Harmonizer().fit(centers.x[:61], centers.batch[:61])
    with pytest.raises(ConfigError, match="not fitted"):
        Harmonizer().transform(centers.x, centers.batch)
    bad = centers.x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ConfigError, match="finite"):
        Harmonizer().fit(bad, centers.batch)
    h = Harmonizer().fit(centers.x, centers.batch)
    with pytest.raises(ConfigError, match="columns"):
        h.transform(centers.x[:, :5], centers.batch)
    with pytest.raises(ConfigError, match="method"):
        Harmonizer(method="harmony")  # type: ignore[arg-type]


# --- label-free new centers ----------------------------------------------------------------


def _new_center(seed: int = 11, n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    data = make_centers(seed=0)
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.5).astype(np.int64)
    shift = rng.normal(0.0, 2.0, data.x.shape[1])
    return y[:, None] * data.class_effect + shift + rng.normal(0.0, 1.5, (n, data.x.shape[1])), y


@pytest.mark.parametrize("method", ["combat", "covbat"])
def test_label_free_center_is_aligned(centers: Centers, method: str) -> None:
    h = Harmonizer(method=method).fit(  # type: ignore[arg-type]
        centers.x, centers.batch, design_from_labels(centers.y)
    )
    new, _ = _new_center()
    with pytest.warns(UserWarning, match="biology"):
        h.fit_new_center(new, "new")
    assert h.centers[-1] == "new" and h.state is not None and h.state.label_free == ("new",)
    train = h.transform(centers.x, centers.batch)
    out = h.transform(new, ["new"] * len(new))
    before = np.abs(new.mean(axis=0) - centers.x.mean(axis=0)) / centers.x.std(axis=0)
    after = np.abs(out.mean(axis=0) - train.mean(axis=0)) / train.std(axis=0)
    assert np.mean(after) < 0.3 * np.mean(before)


def test_label_free_never_reads_labels(centers: Centers) -> None:
    """No parameter can carry labels, and the estimate depends on the rows' features only:
    the same features in another order (any hidden label order broken) give the same center."""
    parameters = set(inspect.signature(Harmonizer.fit_new_center).parameters)
    assert parameters == {"self", "features", "name", "slides", "min_slides"}
    new, y = _new_center()
    results = []
    for order in (np.arange(len(new)), np.random.default_rng(1).permutation(len(new))):
        h = Harmonizer().fit(centers.x, centers.batch, design_from_labels(centers.y))
        with pytest.warns(UserWarning):
            h.fit_new_center(new[order], "new")
        results.append(h.transform(new, ["new"] * len(new)))
    np.testing.assert_allclose(results[0], results[1], atol=1e-12)
    # labels flipped or shuffled around the same features change nothing: they never enter
    assert y.sum() not in (0, len(y))


def test_label_free_minimum_and_slide_counting(centers: Centers) -> None:
    h = Harmonizer().fit(centers.x, centers.batch)
    new, _ = _new_center(n=40)
    with pytest.raises(TooFewSlidesError, match="at least 20"):
        h.fit_new_center(new[:19], "new")
    with pytest.raises(TooFewSlidesError):  # 40 tiles, but only 8 slides
        h.fit_new_center(new, "new", slides=np.repeat(np.arange(8), 5))
    with pytest.raises(ConfigError, match="already fitted"):
        h.fit_new_center(new, "center0")
    with pytest.warns(UserWarning):
        h.fit_new_center(new[:10], "small", min_slides=10)
    assert "small" in h.centers


@pytest.mark.parametrize("method", ["combat", "covbat"])
def test_a_feature_constant_within_a_center_is_neutralised(tmp_path: Path, method: str) -> None:
    """A unit that is always 0 at one center stays a perfect center marker under any
    per-center location / scale map; it is set to the training mean for every row instead."""
    from histoguard.harmonize import load_harmonizer, save_harmonizer

    rng = np.random.default_rng(4)
    x = rng.normal(size=(120, 6)) + np.repeat([[0.0], [1.5]], 60, axis=0)
    x[:60, 2] = 0.0  # dead at center A, varying at B
    centers = np.repeat(["A", "B"], 60)
    h = Harmonizer(method=method)
    with pytest.warns(UserWarning, match="1 of 6 features are constant within"):
        fitted = h.fit_transform(x, centers)
    assert h.state is not None and h.state.neutral is not None
    assert h.state.neutral.tolist() == [False, False, True, False, False, False]
    out = h.transform(x, centers)
    np.testing.assert_allclose(out[:, 2], x[:, 2].mean())
    np.testing.assert_allclose(fitted[:, 2], x[:, 2].mean())
    # The other features are harmonised as if the neutral one were absent.
    alone = Harmonizer(method=method).fit(np.delete(x, 2, axis=1), centers)
    rest = alone.transform(np.delete(x, 2, axis=1), centers)
    np.testing.assert_allclose(np.delete(out, 2, axis=1), rest, atol=1e-10)
    save_harmonizer(h, tmp_path)
    again = load_harmonizer(tmp_path)
    np.testing.assert_array_equal(again.transform(x, centers), out)
    matrix, offset = h.affine("B")
    np.testing.assert_allclose(x[60:] @ matrix + offset, out[60:], atol=1e-9)
