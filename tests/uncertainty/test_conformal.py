"""Split conformal prediction sets and their coverage report: known answers, validity on
constructed data, Clopper-Pearson parity with scipy, per-class coverage on real LC25000 tiles."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
from scipy.stats import binomtest

from histoguard.errors import ConfigError
from histoguard.uncertainty import (
    ConformalClassifier,
    aurc,
    class_scores,
    clopper_pearson,
    conformal_quantile,
    coverage_report,
    min_calibration_size,
    needs_review,
    nonconformity_scores,
    risk_coverage_curve,
)


def _calibrated(n: int, n_classes: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities from a Dirichlet, and labels drawn from them: a perfectly calibrated model."""
    p = rng.dirichlet(np.full(n_classes, 0.5), size=n)
    y = np.array([rng.choice(n_classes, p=row) for row in p])
    return p, y


# --- known answers ---------------------------------------------------------------------------


def test_quantile_uses_the_finite_sample_rank() -> None:
    scores = np.arange(1.0, 11.0)[::-1]  # 10 scores, 1..10, in any order
    assert conformal_quantile(scores, 0.1) == 10.0  # ceil(11 * 0.9) = 10
    assert conformal_quantile(scores, 0.2) == 9.0  # ceil(11 * 0.8) = 9
    assert conformal_quantile(scores, 0.5) == 6.0  # ceil(11 * 0.5) = 6
    assert conformal_quantile(scores[:5], 0.1) == math.inf  # ceil(6 * 0.9) = 6 > 5


def test_lac_and_aps_scores_by_hand() -> None:
    p = np.array([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]])
    np.testing.assert_allclose(class_scores(p, score="lac"), 1 - p)
    aps = class_scores(p, score="aps", randomized=False)
    np.testing.assert_allclose(aps, [[0.5, 0.8, 1.0], [1.0, 0.6, 0.9]])
    assert nonconformity_scores(p, [1, 2], score="aps", randomized=False).tolist() == pytest.approx(
        [0.8, 0.9]
    )
    u = np.random.default_rng(7).uniform(size=(2, 1))
    randomized = class_scores(p, score="aps", randomized=True, seed=7)
    np.testing.assert_allclose(randomized, aps - (1 - u) * p)


def test_aps_ties_are_broken_by_class_index() -> None:
    p = np.array([[0.4, 0.4, 0.2]])
    np.testing.assert_allclose(class_scores(p, score="aps", randomized=False), [[0.4, 0.8, 1.0]])


def test_sets_by_hand() -> None:
    # Calibration scores 1 - p_true: 0.1, 0.2, ..., 0.9 (n = 9); alpha = 0.2 -> rank ceil(8) = 8.
    p_true = 1 - np.arange(1, 10) / 10
    cal = np.stack([p_true, 1 - p_true], axis=1)
    model = ConformalClassifier.fit(cal, np.zeros(9, dtype=int), alpha=0.2)
    assert model.threshold == pytest.approx(0.8)
    sets = model.predict_sets(np.array([[0.9, 0.1], [0.5, 0.5], [0.1, 0.9], [0.19, 0.81]]))
    assert sets.tolist() == [[True, False], [True, True], [False, True], [False, True]]
    assert needs_review(sets).tolist() == [False, True, False, False]


# --- validity on constructed data -------------------------------------------------------------


@pytest.mark.parametrize(("score", "randomized"), [("lac", True), ("aps", True), ("aps", False)])
@pytest.mark.parametrize("alpha", [0.1, 0.05])
def test_marginal_coverage_is_valid(
    score: Literal["lac", "aps"], randomized: bool, alpha: float
) -> None:
    rng = np.random.default_rng(0)
    coverages = []
    for trial in range(40):
        p_cal, y_cal = _calibrated(300, 4, rng)
        p_test, y_test = _calibrated(500, 4, rng)
        model = ConformalClassifier.fit(
            p_cal,
            y_cal,
            alpha=alpha,
            score=score,
            randomized=randomized,
            seed=trial,
        )
        sets = model.predict_sets(p_test)
        coverages.append(sets[np.arange(500), y_test].mean())
    mean = float(np.mean(coverages))
    # Validity: E[coverage] in [1 - alpha, 1 - alpha + 1/(n+1)] (continuous scores); 40 x 500
    # test cases give a standard error of ~0.002 plus the calibration spread.
    assert 1 - alpha - 0.01 <= mean <= 1 - alpha + 1 / 301 + 0.01, mean


def test_mondrian_by_class_fixes_the_hard_class() -> None:
    rng = np.random.default_rng(1)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 2, size=n)
        # Class 1 is hard: its true probability is often low.
        p1 = np.where(y == 1, rng.beta(2, 2, size=n), rng.beta(1, 8, size=n))
        return np.stack([1 - p1, p1], axis=1), y

    p_cal, y_cal = draw(2000)
    p_test, y_test = draw(20000)
    marginal = ConformalClassifier.fit(p_cal, y_cal, alpha=0.1)
    mondrian = ConformalClassifier.fit(p_cal, y_cal, alpha=0.1, mondrian="class")
    report_m = coverage_report(marginal.predict_sets(p_test), y_test, alpha=0.1)
    report_c = coverage_report(mondrian.predict_sets(p_test), y_test, alpha=0.1)
    assert report_m.per_class[1].coverage < 0.86  # marginal: the hard class under-covered
    assert report_m.per_class[1].verdict == "undercovered"
    for row in report_c.per_class:
        assert 0.88 <= row.coverage <= 0.92, row
        assert row.verdict != "undercovered"


def test_mondrian_by_group_and_fallback_for_small_groups() -> None:
    rng = np.random.default_rng(2)
    p, y = _calibrated(400, 3, rng)
    groups = np.array(["A"] * 200 + ["B"] * 195 + ["C"] * 5)
    model = ConformalClassifier.fit(p, y, groups, alpha=0.1, mondrian="group")
    assert min_calibration_size(0.1) == 9
    assert model.fallback == ("C",)
    assert model.counts == {"A": 200, "B": 195, "C": 5}
    assert model.thresholds["C"] == model.threshold
    assert model.thresholds["A"] == conformal_quantile(nonconformity_scores(p[:200], y[:200]), 0.1)
    sets = model.predict_sets(p[:3], groups=["A", "C", "unseen"])
    assert sets.shape == (3, 3)
    with pytest.raises(ConfigError, match="group"):
        model.predict_sets(p[:3])


def test_round_trip_through_json() -> None:
    rng = np.random.default_rng(3)
    p, y = _calibrated(60, 3, rng)
    groups = ["X"] * 55 + ["Y"] * 5
    model = ConformalClassifier.fit(p, y, groups, alpha=0.05, score="aps", mondrian="group", seed=4)
    again = ConformalClassifier.from_dict(json.loads(json.dumps(model.to_dict())))
    assert again == model
    np.testing.assert_array_equal(again.predict_sets(p, groups), model.predict_sets(p, groups))
    tiny = ConformalClassifier.fit(p[:5], y[:5], alpha=0.1)
    assert tiny.threshold == math.inf
    assert ConformalClassifier.from_dict(json.loads(json.dumps(tiny.to_dict()))) == tiny
    assert tiny.predict_sets(p).all()


@pytest.mark.parametrize(
    "kwargs",
    [{"alpha": 0.0}, {"alpha": 1.0}, {"score": "raps"}, {"mondrian": "center"}],
)
def test_invalid_settings_raise_config_error(kwargs: dict[str, object]) -> None:
    p, y = _calibrated(20, 3, np.random.default_rng(0))
    with pytest.raises(ConfigError):
        ConformalClassifier.fit(p, y, **kwargs)


def test_invalid_inputs_raise_config_error() -> None:
    p, y = _calibrated(20, 3, np.random.default_rng(0))
    with pytest.raises(ConfigError, match="sum to 1"):
        ConformalClassifier.fit(p * 2, y)
    with pytest.raises(ConfigError, match="labels"):
        ConformalClassifier.fit(p, y + 3)
    with pytest.raises(ConfigError, match="group"):
        ConformalClassifier.fit(p, y, mondrian="group")
    with pytest.raises(ConfigError, match="classes"):
        ConformalClassifier.fit(p, y).predict_sets(np.full((2, 2), 0.5))
    with pytest.raises(ConfigError, match="format"):
        ConformalClassifier.from_dict({"format": 99})
    saved = ConformalClassifier.fit(p, y).to_dict()
    with pytest.raises(ConfigError, match="unknown score"):
        ConformalClassifier.from_dict({**saved, "score": "raps"})
    with pytest.raises(ConfigError, match="lacks"):
        ConformalClassifier.from_dict({k: v for k, v in saved.items() if k != "threshold"})


# --- coverage report --------------------------------------------------------------------------


@pytest.mark.parametrize(("k", "n"), [(0, 10), (10, 10), (7, 10), (45, 50), (900, 1000), (1, 3)])
def test_clopper_pearson_matches_scipy_binomtest(k: int, n: int) -> None:
    expected = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    assert clopper_pearson(k, n) == pytest.approx((expected.low, expected.high), abs=1e-10)


def test_clopper_pearson_rejects_bad_counts() -> None:
    with pytest.raises(ConfigError):
        clopper_pearson(5, 4)
    with pytest.raises(ConfigError):
        clopper_pearson(1, 4, confidence=1.0)
    assert clopper_pearson(0, 0) == (0.0, 1.0)


def test_coverage_report_by_hand() -> None:
    sets = np.array([[1, 0], [1, 1], [0, 1], [0, 0], [1, 0], [0, 1]], dtype=bool)
    labels = np.array([0, 1, 0, 1, 0, 1])
    report = coverage_report(
        sets, labels, alpha=0.1, groups=["a", "a", "a", "b", "b", "b"], class_names=["n", "t"]
    )
    assert report.overall.covered == 4 and report.overall.n == 6
    assert [r.name for r in report.per_class] == ["n", "t"]
    assert report.per_class[0].coverage == pytest.approx(2 / 3)
    assert report.per_group[1].name == "b" and report.per_group[1].covered == 2
    assert report.set_size_counts == (1, 4, 1)
    assert report.overall.review_rate == pytest.approx(2 / 6)
    assert report.overall.verdict == "inconclusive"  # 6 cases cannot decide


def test_verdicts_need_the_whole_interval_on_one_side() -> None:
    labels = np.zeros(1000, dtype=int)
    good = np.zeros((1000, 2), dtype=bool)
    good[:960, 0] = True
    bad = np.zeros((1000, 2), dtype=bool)
    bad[:850, 0] = True
    near = np.zeros((1000, 2), dtype=bool)
    near[:905, 0] = True
    assert coverage_report(good, labels, alpha=0.1).overall.verdict == "covered"
    assert coverage_report(bad, labels, alpha=0.1).overall.verdict == "undercovered"
    assert coverage_report(near, labels, alpha=0.1).overall.verdict == "inconclusive"


def test_risk_coverage_curve_and_aurc_by_hand() -> None:
    confidence = np.array([0.6, 0.9, 0.7, 0.8])
    correct = np.array([True, True, False, True])
    kept, accuracy = risk_coverage_curve(confidence, correct)
    np.testing.assert_allclose(kept, [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(accuracy, [1.0, 1.0, 2 / 3, 0.75])
    assert aurc(confidence, correct) == pytest.approx((0 + 0 + 1 / 3 + 1 / 4) / 4)
    # A perfect ranking beats the reverse ranking.
    assert aurc(-confidence, correct) > aurc(confidence, correct)
    with pytest.raises(ConfigError):
        risk_coverage_curve(confidence, correct[:2])


# --- real tissue: LC25000 lung, 3 classes ---------------------------------------------------

LUNG_CLASSES = ("lung_aca", "lung_n", "lung_scc")
SEEDS = 20


@pytest.fixture(scope="module")
def lung_embeddings(shared_data: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """hg-cnn embeddings (seeded random weights) of one LC25000 tile per source-image group
    (740 tiles), with labels and groups. The 4 tiles of a group are rotated copies: keeping
    one makes the tiles exchangeable, which split conformal needs."""
    from histoguard.core._image import decode_image
    from histoguard.encoders import load_encoder

    root = shared_data / "tiles" / "lc25000_lung"
    with (root / "labels.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    first: dict[str, dict[str, str]] = {}
    for r in rows:
        first.setdefault(r["source_image_group"], r)
    chosen = [first[g] for g in sorted(first)]
    encoder = load_encoder("hg-cnn")
    features = []
    for start in range(0, len(chosen), 128):
        batch = chosen[start : start + 128]
        features.append(encoder.encode(np.stack([decode_image(root / r["path"]) for r in batch])))
    labels = np.array([LUNG_CLASSES.index(r["label"]) for r in chosen])
    groups = np.array([r["source_image_group"] for r in chosen])
    return np.concatenate(features).astype(np.float64), labels, groups


@pytest.mark.parametrize(("score", "alpha"), [("lac", 0.1), ("aps", 0.1), ("lac", 0.05)])
def test_per_class_coverage_on_real_lung_tiles(
    lung_embeddings: tuple[np.ndarray, np.ndarray, np.ndarray],
    score: Literal["lac", "aps"],
    alpha: float,
) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y, groups = lung_embeddings
    unique = np.unique(groups)
    per_class, review = [], []
    for seed in range(SEEDS):
        # Split by source image group: train / calibration / test, never a random tile split.
        shuffled = np.random.default_rng(seed).permutation(unique)
        cut = int(0.4 * len(unique))
        train_g, cal_g = set(shuffled[:cut]), set(shuffled[cut:][::2])
        train = np.isin(groups, list(train_g))
        cal = ~train & np.isin(groups, list(cal_g))
        test = ~train & ~cal
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
        probe.fit(x[train], y[train])
        model = ConformalClassifier.fit(
            probe.predict_proba(x[cal]),
            y[cal],
            alpha=alpha,
            score=score,
            mondrian="class",
            seed=seed,
        )
        sets = model.predict_sets(probe.predict_proba(x[test]))
        report = coverage_report(sets, y[test], alpha=alpha, class_names=LUNG_CLASSES)
        per_class.append([row.coverage for row in report.per_class])
        review.append(report.overall.review_rate)
        accuracy = float(np.mean(probe.predict(x[test]) == y[test]))
    mean = np.mean(per_class, axis=0)
    low = np.min(per_class, axis=0)
    print(
        f"{score}, alpha={alpha}: probe accuracy {accuracy:.3f}; per-class coverage, mean of "
        f"{SEEDS} splits {mean.round(3)}, lowest split {low.round(3)}; review rate "
        f"{np.mean(review):.3f}"
    )
    for name, value in zip(LUNG_CLASSES, mean, strict=True):
        assert 1 - alpha - 0.02 <= value <= 1 - alpha + 0.05, (name, value)
