"""Calibration: scaling maps, ECE / Brier / NLL with parity checks, and a real-data check."""

from __future__ import annotations

import itertools
import json

import numpy as np
import numpy.typing as npt
import pytest
from sklearn.metrics import brier_score_loss, log_loss

from histoguard.errors import ConfigError
from histoguard.uncertainty import (
    ECE_BINS,
    Calibrator,
    brier_score,
    ece_bootstrap,
    expected_calibration_error,
    negative_log_likelihood,
    reliability_diagram,
)

from .conftest import LungSplits


def _softmax(z: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]


def _overconfident(
    n: int, c: int, true_t: float, seed: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """Logits whose labels are drawn from softmax(logits / true_t): the right T is true_t."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=3.0, size=(n, c))
    p = _softmax(logits / true_t)
    labels = np.array([rng.choice(c, p=row) for row in p], dtype=np.int64)
    return logits, labels


def _reference_ece(
    probs: npt.NDArray[np.float64], labels: npt.NDArray[np.int64], n_bins: int
) -> float:
    """The textbook loop (Guo et al. 2017): bins (lo, hi], weight n_b / N."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0, 1, n_bins + 1)
    ece = 0.0
    for lo, hi in itertools.pairwise(edges):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            ece += inside.mean() * abs(correct[inside].mean() - conf[inside].mean())
    return float(ece)


# --- scaling maps -------------------------------------------------------------------------------


@pytest.mark.parametrize("true_t", [0.5, 2.0, 4.0])
def test_temperature_recovers_the_true_temperature(true_t: float) -> None:
    logits, labels = _overconfident(4000, 4, true_t, seed=1)
    fitted = Calibrator.fit(logits, labels)
    assert fitted.kind == "temperature"
    assert fitted.temperature == pytest.approx(true_t, rel=0.12)


def test_temperature_minimises_nll_and_keeps_predictions() -> None:
    logits, labels = _overconfident(2000, 3, 3.0, seed=2)
    fitted = Calibrator.fit(logits, labels)
    best = negative_log_likelihood(fitted.transform(logits), labels)
    for factor in (0.8, 1.25):
        other = Calibrator(
            kind="temperature", scale=(fitted.scale[0] * factor,) * 3, bias=(0.0,) * 3
        )
        assert best < negative_log_likelihood(other.transform(logits), labels)
    assert np.array_equal(fitted.transform(logits).argmax(1), logits.argmax(1))


def test_vector_scaling_fixes_a_class_bias() -> None:
    rng = np.random.default_rng(3)
    true = rng.normal(scale=2.0, size=(3000, 3))
    labels = np.array([rng.choice(3, p=row) for row in _softmax(true)], dtype=np.int64)
    shifted = true + np.array([2.0, 0.0, -1.0])  # a model biased towards class 0
    before = negative_log_likelihood(_softmax(shifted), labels)
    t_only = Calibrator.fit(shifted, labels)
    vector = Calibrator.fit(shifted, labels, kind="vector", l2=0.0)
    after_t = negative_log_likelihood(t_only.transform(shifted), labels)
    after_v = negative_log_likelihood(vector.transform(shifted), labels)
    assert after_v < after_t <= before
    # the bias is recovered up to the shift every softmax ignores
    b = np.array(vector.bias)
    assert np.allclose(b - b.mean(), -(np.array([2.0, 0.0, -1.0]) - 1 / 3), atol=0.25)


def test_calibrator_round_trips_through_json() -> None:
    logits, labels = _overconfident(500, 3, 2.0, seed=4)
    for kind in ("temperature", "vector"):
        fitted = Calibrator.fit(logits, labels, kind=kind)  # type: ignore[arg-type]
        saved = json.loads(json.dumps(fitted.to_dict()))
        loaded = Calibrator.from_dict(saved)
        assert loaded == fitted
        assert np.allclose(loaded.transform(logits), fitted.transform(logits))
    assert Calibrator.identity(3).transform(logits) == pytest.approx(_softmax(logits))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda z, y: Calibrator.fit(z, y, kind="platt"), "kind"),
        (lambda z, y: Calibrator.fit(z, y, kind="vector", l2=-1.0), "l2"),
        (lambda z, y: Calibrator.fit(z[:, :1], y), "shape"),
        (lambda z, y: Calibrator.fit(z, y[:-1]), "labels"),
        (lambda z, y: Calibrator.fit(z, y + 5), "labels"),
        (lambda z, y: Calibrator.fit(z, y + 0.5), "integer"),
        (lambda z, y: Calibrator.fit(z, y.astype(str)), "integer"),
        (lambda z, y: Calibrator.fit(np.full_like(z, np.nan), y), "NaN"),
        (lambda z, y: Calibrator.identity(3).transform(z[:, :2]), "classes"),
        (lambda z, y: Calibrator(kind="temperature", scale=(-1.0, -1.0), bias=(0, 0)), "> 0"),
        (lambda z, y: Calibrator(kind="temperature", scale=(1.0, 2.0), bias=(0, 0)), "shared"),
        (lambda z, y: Calibrator.from_dict({"kind": "temperature"}), "saved"),
        (lambda z, y: Calibrator(kind="vector", scale=(1.0, 1.0), bias=(0.0,)), "per class"),
    ],
)
def test_bad_settings_raise_config_error(call: object, match: str) -> None:
    logits, labels = _overconfident(50, 3, 1.0, seed=5)
    with pytest.raises(ConfigError, match=match):
        call(logits, labels)  # type: ignore[operator]


# --- metrics ------------------------------------------------------------------------------------


def test_nll_matches_sklearn_log_loss() -> None:
    logits, labels = _overconfident(700, 4, 1.5, seed=6)
    probs = _softmax(logits)
    assert negative_log_likelihood(probs, labels) == pytest.approx(
        log_loss(labels, probs, labels=[0, 1, 2, 3]), rel=1e-9
    )


def test_binary_brier_is_twice_sklearn_brier_score_loss() -> None:
    logits, labels = _overconfident(600, 2, 1.0, seed=7)
    probs = _softmax(logits)
    assert brier_score(probs, labels) == pytest.approx(
        2 * brier_score_loss(labels, probs[:, 1]), rel=1e-9
    )


def test_multiclass_brier_known_answers() -> None:
    labels = np.array([0, 1])
    assert brier_score(np.array([[1.0, 0, 0], [0, 1.0, 0]]), labels) == 0.0
    assert brier_score(np.array([[0, 1.0, 0], [1.0, 0, 0]]), labels) == pytest.approx(2.0)
    assert brier_score(np.full((2, 3), 1 / 3), labels) == pytest.approx(2 / 3)


@pytest.mark.parametrize("seed", range(4))
def test_equal_width_ece_matches_the_reference_loop(seed: int) -> None:
    logits, labels = _overconfident(900, 3, 0.4, seed=seed)
    probs = _softmax(logits)
    assert expected_calibration_error(probs, labels) == pytest.approx(
        _reference_ece(probs, labels, ECE_BINS), abs=1e-12
    )
    assert expected_calibration_error(probs, labels, n_bins=7) == pytest.approx(
        _reference_ece(probs, labels, 7), abs=1e-12
    )


def test_ece_known_answers() -> None:
    # 10 cases at confidence 0.9, 9 right: perfectly calibrated
    probs = np.tile([0.9, 0.1], (10, 1))
    labels = np.array([0] * 9 + [1])
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-12)
    assert expected_calibration_error(probs, labels, strategy="mass") == pytest.approx(0, abs=1e-12)
    # all at 0.9 and all wrong: gap 0.9
    assert expected_calibration_error(probs, np.ones(10, dtype=int)) == pytest.approx(0.9)


def test_reliability_diagram_bins() -> None:
    logits, labels = _overconfident(1000, 3, 1.0, seed=8)
    probs = _softmax(logits)
    width = reliability_diagram(probs, labels)
    assert width.edges.shape == (16,) and width.count.sum() == 1000
    filled = width.count > 0
    lo, hi = width.edges[:-1][filled], width.edges[1:][filled]
    assert np.all((width.confidence[filled] > lo) & (width.confidence[filled] <= hi))
    assert np.isnan(width.accuracy[~filled]).all()  # bins below 1/C are empty
    mass = reliability_diagram(probs, labels, strategy="mass")
    assert mass.count.max() - mass.count.min() <= 1 and mass.count.sum() == 1000
    assert np.all(np.diff(mass.edges) >= 0) and mass.edges[-1] == 1.0
    assert np.all(np.diff(mass.confidence) >= 0)  # bins follow sorted confidence
    json.dumps(mass.to_dict())
    assert mass.to_dict()["ece"] == pytest.approx(
        expected_calibration_error(probs, labels, strategy="mass")
    )


def test_ece_bootstrap_interval_is_seeded_and_covers_the_estimate() -> None:
    logits, labels = _overconfident(400, 3, 0.5, seed=9)
    probs = _softmax(logits)
    a = ece_bootstrap(probs, labels, n_bootstrap=200, seed=1)
    b = ece_bootstrap(probs, labels, n_bootstrap=200, seed=1)
    c = ece_bootstrap(probs, labels, n_bootstrap=200, seed=2)
    assert a == b and a != c
    assert a.low <= a.ece <= a.high and a.high - a.low > 0
    assert a.bootstrap_mean >= a.ece  # the plug-in ECE is biased upwards
    assert a.ece == pytest.approx(expected_calibration_error(probs, labels))
    # more cases, narrower interval
    logits2, labels2 = _overconfident(4000, 3, 0.5, seed=9)
    wide = ece_bootstrap(_softmax(logits2), labels2, n_bootstrap=200, seed=1)
    assert wide.high - wide.low < a.high - a.low


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_bins": 0}, "n_bins"),
        ({"strategy": "quantile"}, "strategy"),
        ({"n_bootstrap": 0}, "n_bootstrap"),
        ({"level": 1.0}, "level"),
    ],
)
def test_metric_settings_raise_config_error(kwargs: dict[str, object], match: str) -> None:
    probs = np.full((4, 2), 0.5)
    with pytest.raises(ConfigError, match=match):
        ece_bootstrap(probs, np.array([0, 1, 0, 1]), **kwargs)  # type: ignore[arg-type]


def test_metrics_reject_non_probabilities() -> None:
    with pytest.raises(ConfigError, match="sum to 1"):
        brier_score(np.array([[0.5, 0.6]]), np.array([0]))
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        negative_log_likelihood(np.array([[1.5, -0.5]]), np.array([0]))


# --- real tissue --------------------------------------------------------------------------------


def test_temperature_scaling_helps_on_held_out_lung_groups(lung_splits: LungSplits) -> None:
    """LC25000 lung (normal / adenocarcinoma / squamous), group-disjoint train / calib / test."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    s = lung_splits
    assert not (s.groups["train"] & s.groups["calib"]) and not (
        s.groups["calib"] & s.groups["test"]
    )
    assert not (s.groups["train"] & s.groups["test"])
    scaler = StandardScaler().fit(s.x["train"])
    # weakly regularised on few groups: over-confident, as real models are
    probe = LogisticRegression(C=10.0, max_iter=2000).fit(
        scaler.transform(s.x["train"]), s.y["train"]
    )

    def logits(split: str) -> npt.NDArray[np.float64]:
        return np.asarray(probe.decision_function(scaler.transform(s.x[split])), dtype=np.float64)

    calibrator = Calibrator.fit(logits("calib"), s.y["calib"])
    raw = _softmax(logits("test"))
    scaled = calibrator.transform(logits("test"))
    y = s.y["test"]
    vector = Calibrator.fit(logits("calib"), s.y["calib"], kind="vector").transform(logits("test"))
    accuracy = float((raw.argmax(1) == y).mean())
    before = ece_bootstrap(raw, y, n_bootstrap=200)
    after = ece_bootstrap(scaled, y, n_bootstrap=200)
    nll_before, nll_after = negative_log_likelihood(raw, y), negative_log_likelihood(scaled, y)
    print(
        f"\nLC25000 lung, hg-cnn, {len(y)} test tiles: accuracy {accuracy:.3f}, "
        f"T = {calibrator.temperature:.3f}; ECE {before.ece:.4f} "
        f"[{before.low:.4f}, {before.high:.4f}] -> {after.ece:.4f} "
        f"[{after.low:.4f}, {after.high:.4f}] "
        f"(bootstrap mean {after.bootstrap_mean:.4f}); "
        f"mass-ECE {expected_calibration_error(raw, y, strategy='mass'):.4f} -> "
        f"{expected_calibration_error(scaled, y, strategy='mass'):.4f}; "
        f"NLL {nll_before:.4f} -> {nll_after:.4f}; "
        f"Brier {brier_score(raw, y):.4f} -> {brier_score(scaled, y):.4f}; vector scaling: "
        f"ECE {expected_calibration_error(vector, y):.4f}, "
        f"NLL {negative_log_likelihood(vector, y):.4f}"
    )
    assert accuracy > 0.6  # the probe learned something, so calibration is meaningful
    assert calibrator.temperature > 1.0  # it was over-confident
    assert after.ece <= before.ece + 0.01
    assert nll_after <= nll_before
