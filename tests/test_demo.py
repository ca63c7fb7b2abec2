"""`histoguard demo` runs offline, takes its real data explicitly, and says what it ran on."""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from histoguard.cli import app
from histoguard.demo._pseudo_slides import build_training_slides
from histoguard.demo._run import DemoResult, run_demo
from histoguard.demo._summary import SEPARABLE_NOTE, summary_lines
from histoguard.errors import ConfigError
from histoguard.features import read_feature_file
from histoguard.slide import read_coords_file
from tests.conftest import REPO_ROOT

# --- the summary, on made-up results (fast) -------------------------------------------------------


def _stratum(n: int, value: float, low: float, high: float) -> dict[str, Any]:
    names = ("auc", "balanced_accuracy", "f1", "sensitivity", "specificity")
    return {"n": n, "metrics": {k: {"value": value, "low": low, "high": high} for k in names}}


def _result(training_source: str, *, value: float, data: Path | None) -> Any:
    report = {
        "labels": ["normal", "tumour"],
        "alpha": 0.05,
        "n_boot": 200,
        "resampled_by": "slide",
        "overall": _stratum(24, value, min(value, 0.8), 1.0),
        "folds": {},
        "centers": {"site0": _stratum(12, value, 0.7, 1.0)},
    }
    audit = {
        "metadata": {
            "subject": f"encoder hg-cnn on a cohort ({training_source} tiles)",
            "tile_source": training_source,
        },
        "robustness_index": {"value": 0.61, "ci": [0.52, 0.70], "confidence": 0.95},
    }
    prediction = SimpleNamespace(
        slide="scan", predicted="tumour", probabilities={"normal": 0.2, "tumour": 0.8}
    )
    return SimpleNamespace(
        source="generated" if data is None else "real",
        data=data,
        slides=(Path("scan.tiff"),),
        training_source=training_source,
        training_report=report,
        fold_sizes=(("fold0", 13, 3, 8), ("fold1", 13, 3, 8), ("fold2", 13, 3, 8)),
        predictions=(prediction,),
        audit=SimpleNamespace(audit=audit, html_path=Path("audit.html")),
    )


def test_summary_of_generated_data_says_so_and_never_says_lung() -> None:
    text = "\n".join(summary_lines(_result("generated", value=1.0, data=None)))
    assert "generated" in text
    assert "lung" not in text.lower()
    assert SEPARABLE_NOTE in text
    assert "rule of three" in text  # a perfect score's [1, 1] interval is explained
    assert "normal vs tumour" in text
    assert "24 pseudo-slides" in text and "held out 8" in text


def test_summary_gives_every_metric_with_its_interval_and_method() -> None:
    text = "\n".join(summary_lines(_result("real", value=0.9, data=Path("/data"))))
    assert "95% percentile bootstrap CI, 200 resamples of slides" in text
    for metric in ("AUC", "balanced accuracy", "F1", "sensitivity", "specificity"):
        assert f"{metric} 0.900 [0.800, 1.000]" in text
    assert "robustness index 0.610 [0.520, 0.700] (95% percentile slide-bootstrap CI" in text
    assert "LC25000 lung tiles" in text
    assert "rule of three" not in text  # the score is not perfect
    assert SEPARABLE_NOTE not in text


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


def test_real_pseudo_slides_never_reuse_an_original_image(
    shared_data: Path, tmp_path: Path
) -> None:
    _, slides, source = build_training_slides(tmp_path, shared_data)
    assert source == "real"
    tiles = [tile for slide in slides for tile in slide.iterdir()]
    digests = [hashlib.sha256(tile.read_bytes()).hexdigest() for tile in tiles]
    assert len(digests) == len(set(digests))  # no tile copied into two places: no leak


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
    assert (tmp_path / "demo" / "predictions" / "generated-slide.attention.png").is_file()
    assert (tmp_path / "demo" / "model" / "fold_0" / "model.safetensors").is_file()
    assert "simulated two-center cohort (generated tiles)" in result.output
    assert (tmp_path / "demo" / "audit" / "audit.html").is_file()


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
    assert result.heatmaps[result.predictions[0].slide]["attention"].is_file()
    audit = result.audit.audit
    assert audit["metadata"]["tile_source"] == "real"
    for part in ("robustness_index", "apd", "clustering_score", "stress", "adversarial"):
        assert "skipped" not in audit[part], (part, audit[part])
    text = "\n".join(result.summary())
    assert "real LC25000 lung tiles" in text
    assert f"Data: {shared_data}" in text
    assert SEPARABLE_NOTE not in text
