"""Slide-level metrics, bootstrap intervals, per-stratum reports and their tables."""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from histoguard.mil._compare import compare_designs
from histoguard.mil._metrics import (
    N_VALID_KEY,
    binary_metrics,
    bootstrap_ci,
    format_table,
    metrics_report,
    multiclass_metrics,
)


def brute_force_auc(y: np.ndarray, score: np.ndarray) -> float:
    pos, neg = score[y == 1], score[y == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(wins / (len(pos) * len(neg)))


def synthetic_binary(n: int, seed: int, separation: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    score = 1 / (1 + np.exp(-(separation * (2 * y - 1) + rng.normal(size=n))))
    return y, score


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 1), st.integers(0, 5)), min_size=2, max_size=40).filter(
        lambda rows: len({label for label, _ in rows}) == 2
    )
)
def test_auc_equals_pairwise_count_with_ties(rows: list[tuple[int, int]]) -> None:
    y = np.array([label for label, _ in rows])
    score = np.array([s for _, s in rows], dtype=float) / 5  # few distinct values: many ties
    assert binary_metrics(y, score)["auc"] == pytest.approx(brute_force_auc(y, score))


def test_auc_is_nan_with_one_class() -> None:
    result = binary_metrics(np.ones(5, dtype=int), np.linspace(0, 1, 5))
    assert math.isnan(result["auc"])
    assert math.isnan(result["specificity"]) and math.isnan(result["balanced_accuracy"])
    assert result["sensitivity"] == pytest.approx(0.6)  # scores 0.5, 0.75, 1.0 pass 0.5


def test_known_confusion_matrix() -> None:
    # TP=3, FN=1, FP=2, TN=4 at threshold 0.5 (0.5 itself counts as positive).
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    score = np.array([0.9, 0.8, 0.5, 0.2, 0.7, 0.6, 0.4, 0.3, 0.1, 0.0])
    m = binary_metrics(y, score)
    assert m["sensitivity"] == pytest.approx(3 / 4)
    assert m["specificity"] == pytest.approx(4 / 6)
    assert m["balanced_accuracy"] == pytest.approx((3 / 4 + 4 / 6) / 2)
    assert m["f1"] == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))
    assert m["accuracy"] == pytest.approx(7 / 10)
    assert (m["n"], m["n_positive"]) == (10, 4)
    assert binary_metrics(y, score, threshold=0.55)["sensitivity"] == pytest.approx(2 / 4)


def test_binary_metrics_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="0 and 1"):
        binary_metrics([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="finite"):
        binary_metrics([0, 1], [0.1, np.nan])
    with pytest.raises(ValueError, match="shape"):
        binary_metrics([0, 1, 1], [0.1, 0.2])


def test_multiclass_known_values() -> None:
    y = np.array([0, 0, 1, 1, 2, 2])
    probs = np.array(
        [
            [0.8, 0.1, 0.1],
            [0.3, 0.6, 0.1],  # class 0 called 1
            [0.1, 0.8, 0.1],
            [0.2, 0.7, 0.1],
            [0.1, 0.2, 0.7],
            [0.5, 0.1, 0.4],  # class 2 called 0
        ]
    )
    m = multiclass_metrics(y, probs)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["balanced_accuracy"] == pytest.approx((1 / 2 + 2 / 2 + 1 / 2) / 3)
    f1 = [2 * 1 / (2 + 2), 2 * 2 / (2 + 3), 2 * 1 / (2 + 1)]  # 2TP / (support + predicted)
    assert m["f1"] == pytest.approx(np.mean(f1))
    ovr = [brute_force_auc((y == c).astype(int), probs[:, c]) for c in range(3)]
    assert m["auc"] == pytest.approx(np.mean(ovr))


def test_binary_and_two_class_multiclass_agree_on_auc() -> None:
    y, score = synthetic_binary(200, seed=1)
    probs = np.stack([1 - score, score], axis=1)
    assert multiclass_metrics(y, probs)["auc"] == pytest.approx(binary_metrics(y, score)["auc"])


def assert_same_ci(a: Mapping[str, tuple[float, ...]], b: Mapping[str, tuple[float, ...]]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-12, err_msg=key)


def test_vectorised_bootstrap_matches_per_resample_loop() -> None:
    y, score = synthetic_binary(60, seed=2)
    groups = np.arange(60) // 3
    fast = functools.partial(binary_metrics, threshold=0.4)

    def slow(y: np.ndarray, s: np.ndarray) -> dict[str, float]:  # not recognised: loops
        return binary_metrics(y, s, threshold=0.4)

    for g in (None, groups):
        assert_same_ci(
            bootstrap_ci(fast, y, score, n_boot=200, groups=g),
            bootstrap_ci(slow, y, score, n_boot=200, groups=g),
        )
    assert_same_ci(  # the default threshold is the same on both paths
        bootstrap_ci(binary_metrics, y, score, n_boot=100),
        bootstrap_ci(lambda a, b: binary_metrics(a, b), y, score, n_boot=100),
    )
    probs = np.random.default_rng(3).dirichlet(np.ones(3), size=60)
    labels = np.random.default_rng(4).integers(0, 3, 60)
    assert_same_ci(
        bootstrap_ci(multiclass_metrics, labels, probs, n_boot=100),
        bootstrap_ci(lambda a, b: multiclass_metrics(a, b), labels, probs, n_boot=100),
    )


def test_ci_contains_point_estimate_and_narrows_with_more_data() -> None:
    widths = []
    for n in (80, 2000):
        y, score = synthetic_binary(n, seed=5)
        ci = bootstrap_ci(binary_metrics, y, score, n_boot=500)
        for name in ("auc", "balanced_accuracy", "f1", "sensitivity", "specificity"):
            point, low, high = ci[name]
            assert low <= point <= high, name
        widths.append(ci["auc"][2] - ci["auc"][1])
    assert widths[1] < widths[0] / 2


def test_single_class_resamples_are_skipped_and_counted() -> None:
    y = np.array([1] + [0] * 9)
    score = np.linspace(1, 0, 10)
    ci = bootstrap_ci(binary_metrics, y, score, n_boot=1000)
    n_valid = ci[N_VALID_KEY][0]
    # P(the one positive is never drawn in 10 draws) = 0.9 ** 10 ≈ 0.35.
    assert 550 < n_valid < 750
    assert ci["auc"][0] == 1.0 and ci["auc"][1] == 1.0


def test_group_bootstrap_is_wider_when_slides_of_a_patient_agree() -> None:
    rng = np.random.default_rng(6)
    patients = np.repeat(np.arange(30), 10)  # ten slides per patient, identical within patient
    y = np.repeat(rng.integers(0, 2, 30), 10)
    score = np.repeat(rng.uniform(size=30), 10) * 0.6 + 0.4 * y
    rows = bootstrap_ci(binary_metrics, y, score, n_boot=500)
    grouped = bootstrap_ci(binary_metrics, y, score, n_boot=500, groups=patients)
    assert rows["auc"][0] == grouped["auc"][0]

    def width(ci: Mapping[str, tuple[float, float, float]]) -> float:
        return ci["auc"][2] - ci["auc"][1]

    assert width(grouped) > 2 * width(rows)


def test_bootstrap_of_many_resamples_runs_vectorised() -> None:
    # How fast: benchmarks/bench_metrics.py. Here: 1,000 resamples of 500 slides, rows and
    # grouped, give one interval per metric around the point estimate.
    y, score = synthetic_binary(500, seed=7)
    for groups in (None, np.arange(500) // 2):
        ci = bootstrap_ci(binary_metrics, y, score, n_boot=1000, groups=groups)
        value, low, high = ci["auc"]
        assert low <= value <= high
        assert high - low > 0


def test_bootstrap_is_reproducible_by_seed() -> None:
    y, score = synthetic_binary(100, seed=8)
    a = bootstrap_ci(binary_metrics, y, score, n_boot=100, seed=1)
    assert a == bootstrap_ci(binary_metrics, y, score, n_boot=100, seed=1)
    assert a != bootstrap_ci(binary_metrics, y, score, n_boot=100, seed=2)


def make_cohort(n: int = 300) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(9)
    centers = np.array(["A", "B", "C"])[np.arange(n) % 3]
    folds = np.array(["0", "1", "2", "3", "4"])[rng.permutation(n) % 5]
    y = rng.integers(0, 2, n)
    # Center C is harder: its scores separate the classes less.
    separation = np.where(centers == "C", 0.2, 2.0)
    p1 = 1 / (1 + np.exp(-(separation * (2 * y - 1) + rng.normal(size=n))))
    return {"y": y, "probs": np.stack([1 - p1, p1], axis=1), "centers": centers, "folds": folds}


def test_report_breaks_down_by_fold_and_center() -> None:
    c = make_cohort()
    report = metrics_report(
        c["y"], c["probs"], labels=["normal", "tumour"], centers=list(c["centers"]),
        folds=list(c["folds"]), n_boot=200,
    )  # fmt: skip
    json.dumps(report, allow_nan=False)  # JSON-ready as is
    assert report["task"] == "binary" and report["overall"]["n"] == 300
    assert list(report["centers"]) == ["A", "B", "C"]
    assert list(report["folds"]) == ["0", "1", "2", "3", "4"]
    assert sum(f["n"] for f in report["folds"].values()) == 300
    for name, stratum in report["centers"].items():
        mask = c["centers"] == name
        expected = binary_metrics(c["y"][mask], c["probs"][mask, 1])["auc"]
        auc = stratum["metrics"]["auc"]
        assert auc["value"] == pytest.approx(expected)
        assert auc["low"] <= auc["value"] <= auc["high"]
    assert report["centers"]["C"]["metrics"]["auc"]["value"] < 0.75
    assert report["centers"]["A"]["metrics"]["auc"]["value"] > 0.85


def test_report_accepts_one_column_scores_and_multiclass() -> None:
    c = make_cohort(90)
    one = metrics_report(c["y"], c["probs"][:, 1], labels=["a", "b"], n_boot=50)
    two = metrics_report(c["y"], c["probs"], labels=["a", "b"], n_boot=50)
    assert one["overall"] == two["overall"]
    rng = np.random.default_rng(10)
    multi = metrics_report(
        rng.integers(0, 3, 90), rng.dirichlet(np.ones(3), 90), labels=["x", "y", "z"], n_boot=50
    )
    assert multi["task"] == "multiclass" and "sensitivity" not in multi["overall"]["metrics"]
    assert "—" in format_table(multi)  # sensitivity/specificity columns left empty
    with pytest.raises(ValueError, match="labels"):
        metrics_report(c["y"], c["probs"], labels=["a", "b", "c"])


def test_report_with_undefined_metrics_is_still_json() -> None:
    report = metrics_report([1, 1, 0], [0.9, 0.8, 0.1], labels=["a", "b"], centers=["A", "A", "B"])
    json.dumps(report, allow_nan=False)
    assert report["centers"]["A"]["metrics"]["auc"]["value"] is None
    assert "—" in format_table(report)


def test_table_contains_the_numbers() -> None:
    c = make_cohort()
    report = metrics_report(
        c["y"], c["probs"], labels=["normal", "tumour"], centers=list(c["centers"]),
        folds=list(c["folds"]), n_boot=200,
    )  # fmt: skip
    table = format_table(report)
    lines = table.splitlines()
    assert "normal vs tumour" in lines[0] and "95%" in lines[0]
    assert len(lines) == 3 + 1 + 5 + 3
    overall = next(line for line in lines if line.startswith("overall"))
    auc = report["overall"]["metrics"]["auc"]
    assert f"{auc['value']:.3f} [{auc['low']:.3f}, {auc['high']:.3f}]" in overall
    assert f"{report['overall']['metrics']['specificity']['value']:.3f}" in overall
    assert any(line.startswith("center C") for line in lines)
    assert any(line.startswith("fold 4") for line in lines)
    assert len({len(line) for line in lines[1:]}) == 1  # fixed width


def test_compare_designs_reads_the_gap() -> None:
    c = make_cohort()
    kwargs = {"labels": ["normal", "tumour"], "centers": list(c["centers"]), "n_boot": 100}
    random_split = metrics_report(c["y"], c["probs"], **kwargs)  # type: ignore[arg-type]
    # A worse site-aware estimate: shrink the scores towards 0.5 with noise.
    rng = np.random.default_rng(11)
    p1 = np.clip(0.5 + 0.3 * (c["probs"][:, 1] - 0.5) + rng.normal(0, 0.15, 300), 0, 1)
    site_aware = metrics_report(c["y"], p1, **kwargs)  # type: ignore[arg-type]
    text = compare_designs(random_split, site_aware, training_slides={"A": 200, "B": 200})
    a = random_split["overall"]["metrics"]["auc"]["value"]
    b = site_aware["overall"]["metrics"]["auc"]["value"]
    assert a > b
    assert f"{a - b:+.3f}" in text
    assert f"overestimates AUC by {a - b:.2f}" in text
    assert "balanced accuracy by" in text  # the reading rests on more than AUC
    row_b = next(line for line in text.splitlines() if line.startswith("B "))
    assert " 100 " in row_b and " 200 " in row_b  # slides behind the row, training slides
    assert "By held-out center, AUC difference:" in text
    assert "agree" in compare_designs(random_split, random_split)


def test_compare_flags_an_inverted_center_and_a_one_class_center() -> None:
    rng = np.random.default_rng(3)
    n = 120
    centers = np.array(["GlaS", "EBHI"])[np.arange(n) % 2]
    y = rng.integers(0, 2, n)
    good = np.clip(0.5 + 0.4 * (2 * y - 1) + rng.normal(0, 0.1, n), 0, 1)
    # At EBHI the site-aware model is inverted and calls nearly everything "tumour".
    site = np.where(centers == "EBHI", np.clip(0.85 - 0.1 * y + rng.normal(0, 0.03, n), 0, 1), good)
    kwargs = {"labels": ["normal", "tumour"], "centers": list(centers), "n_boot": 200}
    text = compare_designs(
        metrics_report(y, good, **kwargs),  # type: ignore[arg-type]
        metrics_report(y, site, **kwargs),  # type: ignore[arg-type]
    )
    flags = [line for line in text.splitlines() if line.startswith("    EBHI:")]
    assert any("worse than chance" in f and "inverted" in f for f in flags), text
    assert any("specificity" in f and "nearly every slide called tumour" in f for f in flags)
    assert not any(line.startswith("    GlaS:") for line in text.splitlines())
    assert "Held out, EBHI: worse than chance" in text.splitlines()[-1]


def test_few_slides_get_no_interval() -> None:
    y = np.array([0, 1, 0, 1, 0, 1])
    p1 = np.array([0.1, 0.9, 0.2, 0.8, 0.3, 0.7])
    report = metrics_report(y, p1, labels=["normal", "tumour"], centers=["S"] * 6, n_boot=50)
    assert report["overall"]["n_per_class"] == {"normal": 3, "tumour": 3}
    table = format_table(report)
    assert "1.000 (too few slides: 6)" in table and "[1.000, 1.000]" not in table
    text = compare_designs(report, report)
    assert "too few slides: 6" in text and "[1.000, 1.000]" not in text
