"""`histoguard demo` runs offline, takes its real data explicitly, and says what it ran on."""

from __future__ import annotations

import csv
import hashlib
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from histoguard.cli import app
from histoguard.demo._pseudo_slides import (
    COPIES_PER_GROUP,
    HELD_OUT,
    N_SLIDES,
    TILES_PER_SLIDE,
    TUMOUR_TILES,
    build_pseudo_slides,
    groups_needed,
)
from histoguard.demo._run import DemoResult, run_demo
from histoguard.demo._summary import SEPARABLE_NOTE, summary_lines
from histoguard.errors import ConfigError
from histoguard.features import read_feature_file
from histoguard.mil import SlidePrediction
from histoguard.slide import read_coords_file
from tests.conftest import REPO_ROOT
from tests.report._page_checks import check_numbers

# --- the summary, on made-up results (fast) -------------------------------------------------------


def _stratum(n: int, value: float, low: float, high: float) -> dict[str, Any]:
    names = ("auc", "balanced_accuracy", "f1", "sensitivity", "specificity")
    return {"n": n, "metrics": {k: {"value": value, "low": low, "high": high} for k in names}}


def _rate(k: int, n: int, lower: float, upper: float) -> dict[str, Any]:
    return {"k": k, "n": n, "value": k / n, "lower": lower, "upper": upper}


def _coverage_row(name: str, covered: int, n: int, verdict: str) -> dict[str, Any]:
    return {
        "name": name, "n": n, "covered": covered, "coverage": covered / n, "lower": 0.75,
        "upper": 0.99, "mean_set_size": 1.1, "review_rate": 0.1, "verdict": verdict,
    }  # fmt: skip


def _trust() -> dict[str, Any]:
    def calibration(ece: float) -> dict[str, Any]:
        entry = {"value": ece, "lower": ece / 2, "upper": ece * 2}
        return {"ece_width": entry, "ece_mass": entry, "brier": 0.1, "nll": 0.3}

    return {
        "n": 60,
        "alpha": 0.1,
        "calibration": {"before": calibration(0.08), "after": calibration(0.05)},
        "coverage": {
            "overall": _coverage_row("all", 55, 60, "inconclusive"),
            "per_class": [
                _coverage_row("normal", 27, 30, "inconclusive"),
                _coverage_row("tumour", 30, 30, "covered"),
            ],
            "per_group": [],
        },
        "selective": {"review_rate": _rate(9, 60, 0.07, 0.27)},
        "gate": {
            "ood_alpha": 0.05,
            "false_alarms": _rate(1, 60, 0.0004, 0.089),
            "reading": "inconclusive: the 95 % interval contains 0.05",
        },
        "reasons": {"decided": 51, "uncertain": 9},
    }


def _prediction(slide: str, decision: str, reason: str = "", p: float = 0.9) -> SlidePrediction:
    predicted = decision if decision != "review" else "tumour"
    other = "normal" if predicted == "tumour" else "tumour"
    return SlidePrediction(
        slide=slide, probabilities={predicted: p, other: 1 - p}, predicted=predicted,
        attention=None, decision=decision, reason=reason, ood_p_value=0.02 if reason else 0.4,
        prediction_set=() if reason == "out-of-distribution" else (predicted,),
    )  # fmt: skip


def _result(
    training_source: str,
    *,
    value: float,
    data: Path | None,
    predictions: tuple[SlidePrediction, ...] = (),
) -> Any:
    report = {
        "labels": ["normal", "tumour"],
        "alpha": 0.05,
        "n_boot": 200,
        "resampled_by": "slide",
        "overall": _stratum(60, value, min(value, 0.8), 1.0),
        "folds": {},
        "centers": {"site0": _stratum(30, value, 0.7, 1.0)},
        "trust": _trust(),
    }
    audit = {
        "metadata": {
            "subject": f"encoder hg-cnn on a cohort ({training_source} tiles)",
            "tile_source": training_source,
        },
        "robustness_index": {"value": 0.61, "ci": [0.52, 0.70], "confidence": 0.95},
    }
    demo_slide = "scan" if data is None else "CMU-1-Small-Region"
    predictions = predictions or (
        _prediction("held-out-normal", "normal"),
        _prediction("held-out-tumour", "tumour"),
        _prediction(demo_slide, "review", "out-of-distribution"),
    )
    return SimpleNamespace(
        source="generated" if data is None else "real",
        data=data,
        slides=(Path(f"{demo_slide}.tiff"),),
        training_source=training_source,
        training_report=report,
        fold_sizes=(("fold0", 32, 8, 20), ("fold1", 32, 8, 20), ("fold2", 32, 8, 20)),
        calibration={"normal": 10, "tumour": 10},
        held_out={"held-out-normal": "normal", "held-out-tumour": "tumour"},
        predictions=predictions,
        audit=SimpleNamespace(audit=audit, html_path=Path("audit.html")),
        harmonization=SimpleNamespace(comparison=_comparison(), html_path=Path("comparison.html")),
        report_page=None,
    )


def _comparison() -> object:
    from histoguard.robustness import ComparisonResult, ComparisonRow

    return ComparisonResult(
        rows=(
            ComparisonRow(metric="site_probe_auroc", before=0.99, after=0.55,
                          ci_before=(0.97, 1.0), ci_after=(0.41, 0.69)),
            ComparisonRow(metric="task_balanced_accuracy", before=0.8, after=0.79,
                          ci_before=(0.7, 0.9), ci_after=(0.69, 0.88)),
        )
    )  # fmt: skip


def test_summary_of_generated_data_says_so_and_never_says_lung() -> None:
    text = "\n".join(summary_lines(_result("generated", value=1.0, data=None)))
    assert "generated" in text
    assert "lung" not in text.lower()
    assert "skin" not in text.lower()
    assert SEPARABLE_NOTE in text
    assert "rule of three" in text  # a perfect score's [1, 1] interval is explained
    assert "normal vs tumour" in text
    assert f"{N_SLIDES} pseudo-slides" in text and "held out 20" in text
    assert "20 pseudo-slides (whole patients: 10 normal, 10 tumour) held out of every fold" in text
    assert "Prediction for scan: refused: review: out of distribution" in text


def test_summary_gives_every_metric_with_its_interval_and_method() -> None:
    text = "\n".join(summary_lines(_result("real", value=0.9, data=Path("/data"))))
    assert "95% percentile bootstrap CI, 200 resamples of slides" in text
    for metric in ("AUC", "balanced accuracy", "F1", "sensitivity", "specificity"):
        assert f"{metric} 0.900 [0.800, 1.000]" in text
    assert "robustness index 0.610 [0.520, 0.700] (95% percentile slide-bootstrap CI" in text
    assert "LC25000 lung tiles" in text
    assert "rule of three" not in text  # the score is not perfect
    assert SEPARABLE_NOTE not in text


def test_summary_gives_the_trust_readings_with_their_intervals() -> None:
    lines = summary_lines(_result("real", value=0.9, data=Path("/data")))
    text = "\n".join(lines)
    assert "fitted on the 20 calibration slides, read on the 60 cross-validation test" in text
    assert "0.080 [0.040, 0.160] before temperature scaling, 0.050 [0.025, 0.100] after" in text
    assert "normal 27/30 = 0.900 [0.750, 0.990] (inconclusive)" in text
    assert "tumour 30/30 = 1.000 [0.750, 0.990] (covered)" in text
    assert "sent to review 9/60" in text
    assert "1/60 in-distribution test slides flagged, false-alarm rate 0.017 [0.000, 0.089]" in text
    assert "smallest p-value is 1/21 = 0.048" in text


def test_summary_gives_the_harmonisation_before_and_after_with_intervals() -> None:
    text = "\n".join(summary_lines(_result("real", value=0.9, data=Path("/data"))))
    assert (
        "site-probe AUROC (0.5 = center unreadable) 0.990 [0.970, 1.000] -> 0.550 [0.410, 0.690]"
        in text
    )
    assert "task balanced accuracy 0.800 [0.700, 0.900] -> 0.790 [0.690, 0.880]" in text


def test_summary_says_what_each_prediction_means() -> None:
    lines = summary_lines(_result("real", value=0.9, data=Path("/data")))
    (normal,) = [line for line in lines if line.startswith("Prediction for held-out-normal")]
    assert "in distribution, held out: normal (p = 0.90; set {normal}; gate p = 0.4)" in normal
    assert normal.endswith("decided rightly (truly normal)")
    (cmu,) = [line for line in lines if line.startswith("Prediction for CMU-1")]
    assert "refused: skin tissue under a model trained on lung tiles" in cmu
    assert "review: out of distribution (gate p = 0.02" in cmu


def test_summary_never_fakes_a_refusal_or_a_right_answer() -> None:
    predictions = (
        _prediction("held-out-normal", "tumour"),
        _prediction("held-out-tumour", "review", "uncertain"),
        _prediction("CMU-1-Small-Region", "tumour", p=0.99),
    )
    lines = summary_lines(_result("real", value=0.9, data=Path("/data"), predictions=predictions))
    text = "\n".join(lines)
    assert "decided WRONGLY (truly normal)" in text
    assert "held-out-tumour: in distribution, held out: review: uncertain" in text
    assert "not decided: sent to review" in text
    (cmu,) = [line for line in lines if line.startswith("Prediction for CMU-1")]
    assert "NOT refused as out of distribution" in cmu
    assert "refused: skin" not in cmu
    assert "tumour (p = 0.99; set {tumour}; gate p = 0.4)" in cmu


# --- where the real data comes from ---------------------------------------------------------------


def test_no_library_module_reads_the_tests_environment_variable() -> None:
    readers = [
        path.relative_to(REPO_ROOT)
        for path in (REPO_ROOT / "src").rglob("*.py")
        if "HISTOGUARD_TEST_DATA" in path.read_text()
    ]
    assert readers == []


def test_the_demo_ignores_the_tests_environment_variable(
    shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from histoguard.demo import _run

    monkeypatch.setenv("HISTOGUARD_TEST_DATA", str(shared_data))
    monkeypatch.chdir(shared_data.parent)  # where ../shared/data was found from the cwd
    assert _run.check_data_folder(None) is None
    assert _run.find_real_slide(None) is None
    assert _run.find_real_slide(shared_data) == shared_data / _run.REAL_DEMO_SLIDE


def test_a_data_folder_that_is_not_one_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"absent: no such data folder.*--data"):
        run_demo(tmp_path / "out", data=tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"empty: holds none of what the demo uses"):
        run_demo(tmp_path / "out", data=tmp_path / "empty")


def test_the_cli_refuses_a_missing_data_folder(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["demo", "--data", str(tmp_path / "absent"), "-q"])
    assert result.exit_code == 2
    assert "absent" in result.output


def _manifest(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_real_pseudo_slides_never_share_an_original_image(
    shared_data: Path, tmp_path: Path
) -> None:
    pseudo = build_pseudo_slides(tmp_path, shared_data)
    assert pseudo.source == "real"
    folders = [*pseudo.slides, *(slide for slide, _ in pseudo.held_out)]
    assert len(pseudo.slides) == N_SLIDES and len(pseudo.held_out) == len(HELD_OUT)
    tiles = [tile for slide in folders for tile in slide.iterdir()]
    assert len(tiles) == len(folders) * TILES_PER_SLIDE
    slides_of_image: dict[str, set[str]] = {}
    for tile in tiles:  # LC25000 holds some byte-identical copies within one group
        digest = hashlib.sha256(tile.read_bytes()).hexdigest()
        slides_of_image.setdefault(digest, set()).add(tile.parent.name)
    assert all(len(slides) == 1 for slides in slides_of_image.values())  # no image in two
    rows = _manifest(pseudo.manifest)
    assert len(rows) == len(tiles)
    slides_of_group: dict[str, set[str]] = {}
    for row in rows:
        slides_of_group.setdefault(row["source_image_group"], set()).add(row["slide_id"])
        assert (tmp_path / "slides" / row["slide_id"] / row["tile"]).is_file() or (
            tmp_path / "held_out" / row["slide_id"] / row["tile"]
        ).is_file()
    # No original (source_image_group) in two pseudo-slides, so none on both sides of a split
    # nor in a training slide and a calibration or held-out one.
    assert all(len(slides) == 1 for slides in slides_of_group.values())
    copies = Counter((row["slide_id"], row["source_image_group"]) for row in rows)
    assert max(copies.values()) <= COPIES_PER_GROUP
    assert len(slides_of_group) == sum(groups_needed().values())
    with (shared_data / "tiles" / "lc25000_lung" / "labels.csv").open() as f:
        truth = {r["path"]: (r["source_image_group"], r["label"]) for r in csv.DictReader(f)}
    assert all(truth[row["source"]][0] == row["source_image_group"] for row in rows)
    cohort = _manifest(pseudo.cohort)
    assert [r["slide_id"] for r in cohort] == [s.name for s in pseudo.slides]
    assert not {name for name in HELD_OUT} & {r["slide_id"] for r in cohort}
    labels = [r["label"] for r in cohort]
    for slide, label in [*zip(pseudo.slides, labels, strict=True), *pseudo.held_out]:
        kinds = Counter(truth[row["source"]][1] for row in rows if row["slide_id"] == slide.name)
        assert kinds["lung_aca"] == (TUMOUR_TILES if label == "tumour" else 0), (slide.name, kinds)


def test_generated_pseudo_slides_have_the_same_layout(tmp_path: Path) -> None:
    pseudo = build_pseudo_slides(tmp_path, None)
    assert pseudo.source == "generated"
    assert len(pseudo.slides) == N_SLIDES
    assert [label for _, label in pseudo.held_out] == list(HELD_OUT.values())
    for slide in [*pseudo.slides, *(s for s, _ in pseudo.held_out)]:
        assert len(list(slide.glob("*.png"))) == TILES_PER_SLIDE
    assert {r["source"] for r in _manifest(pseudo.manifest)} == {""}
    labels = Counter(r["label"] for r in _manifest(pseudo.cohort))
    assert labels == {"normal": N_SLIDES // 2, "tumour": N_SLIDES // 2}


# --- end to end -----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.integration
def test_demo_without_data_runs_on_generated_data_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["demo", "--out", "demo", "-q"])
    assert result.exit_code == 0, result.output
    assert "every stage ran on generated data" in result.output
    assert "generated pyramidal TIFF" in result.output
    assert SEPARABLE_NOTE in result.output
    assert "lung" not in result.output.lower()
    assert "95% percentile bootstrap CI" in result.output
    tiles = read_coords_file(tmp_path / "demo" / "tiles" / "generated-slide.h5")
    assert len(tiles.coords) > 50
    assert (tmp_path / "demo" / "tiles" / "generated-slide.thumbnail.png").is_file()
    assert str(Path("demo") / "tiles" / "generated-slide.tissue.geojson") in result.output
    features = read_feature_file(tmp_path / "demo" / "features" / "generated-slide.h5")
    assert np.array_equal(features.coords, tiles.coords)
    assert features.attrs["encoder"] == "hg-handcrafted"
    assert "Prediction for generated-slide" in result.output
    assert "Prediction for held-out-normal: in distribution, held out: " in result.output
    assert "Trust, fitted on the 20 calibration slides" in result.output
    with (tmp_path / "demo" / "predictions" / "predictions.csv").open() as f:
        rows = {row["slide"]: row for row in csv.DictReader(f)}
    assert list(rows) == [*HELD_OUT, "generated-slide"]
    for row in rows.values():  # the mechanics ran: every trust field is there
        assert row["decision"] in ("normal", "tumour", "review")
        assert row["reason"] in ("", "out-of-distribution", "batch drift", "uncertain")
        assert (row["reason"] == "") == (row["decision"] != "review")
        assert 0 < float(row["ood_p_value"]) <= 1
        assert abs(float(row["p_normal"]) + float(row["p_tumour"]) - 1) < 1e-4
        assert row["entropy"] != ""
    assert (tmp_path / "demo" / "predictions" / "generated-slide.attention.png").is_file()
    assert (tmp_path / "demo" / "model" / "fold_0" / "model.safetensors").is_file()
    assert "simulated two-center cohort (generated tiles)" in result.output
    assert (tmp_path / "demo" / "audit" / "audit.html").is_file()
    assert (tmp_path / "demo" / "audit" / "comparison.html").is_file()
    assert "Harmonisation (CovBat fitted on half of the audit cohort" in result.output
    assert (tmp_path / "demo" / "report" / "model_card.json").is_file()
    assert "Validation report of the model" in result.output


@pytest.mark.slow
@pytest.mark.integration
def test_demo_with_data_uses_the_real_slide_and_lung_tiles(
    shared_data: Path, tmp_path: Path
) -> None:
    result: DemoResult = run_demo(tmp_path, data=shared_data, progress=False)
    assert result.source == "real"
    assert result.data == shared_data
    assert result.slides[0].name == "CMU-1-Small-Region.svs"
    assert [r.status for r in result.report.results] == ["done"]
    assert result.report.results[0].n_tiles > 20
    assert [r.status for r in result.features_report.results] == ["done"]
    assert result.training_source == "real"
    assert result.training_report["overall"]["metrics"]["auc"]["value"] > 0.8
    assert result.calibration == {"normal": 10, "tumour": 10}
    assert set(result.training_report["trust"]["calibration"]) == {"before", "after"}
    *held_out, cmu = result.predictions
    assert [p.slide for p in held_out] == list(HELD_OUT) == list(result.held_out)
    assert cmu.slide == "CMU-1-Small-Region"
    assert result.heatmaps[cmu.slide]["attention"].is_file()
    assert set(result.heatmaps) == {cmu.slide}  # pseudo-slides have no slide image to draw on
    # Both sides of trust: an in-distribution held-out pseudo-slide is decided, rightly, and
    # the skin slide is refused under the lung model.
    assert any(p.decision == result.held_out[p.slide] for p in held_out), [
        p.summary() for p in held_out
    ]
    assert (cmu.decision, cmu.reason) == ("review", "out-of-distribution"), cmu.summary()
    audit = result.audit.audit
    assert audit["metadata"]["tile_source"] == "real"
    for part in ("robustness_index", "apd", "clustering_score", "stress", "adversarial"):
        assert "skipped" not in audit[part], (part, audit[part])
    # The cure beside the diagnosis, measured on held-out tiles with intervals on both sides.
    # (No direction is asserted: center and class are associated in this cohort, so a probe
    # can read the center through the class, which harmonisation keeps on purpose.)
    assert result.harmonization is not None and result.harmonization.html_path.is_file()
    for metric in ("site_probe_auroc", "task_balanced_accuracy"):
        row = result.harmonization.comparison.row(metric)
        assert None not in (row.before, row.after, row.ci_before, row.ci_after), row
    # The validation report of the demo model: every number traced to its card.
    assert result.report_page is not None
    card = check_numbers(result.report_page.parent)
    assert card["checklist_summary"]["auto_share"] >= 0.8, card["checklist_summary"]
    assert card["leak_check"]["leak_free"] and card["robustness"] is not None
    text = "\n".join(result.summary())
    assert "Validation report of the model (intended use" in text
    assert "real LC25000 lung tiles" in text
    assert f"Data: {shared_data}" in text
    assert SEPARABLE_NOTE not in text
    assert "Prediction for CMU-1-Small-Region: refused: skin tissue" in text
