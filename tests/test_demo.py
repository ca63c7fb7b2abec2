"""`histoguard demo` runs offline and says what it ran on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from histoguard.cli import app
from histoguard.demo._run import run_demo
from histoguard.features import read_feature_file
from histoguard.slide import read_coords_file


@pytest.mark.slow
@pytest.mark.integration
def test_demo_without_real_data_uses_a_generated_slide(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HISTOGUARD_TEST_DATA", str(tmp_path / "absent"))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["demo", "--out", "demo", "-q"])
    assert result.exit_code == 0, result.output
    assert "generated pyramidal TIFF" in result.output
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


@pytest.mark.integration
def test_demo_prefers_the_real_slide(
    shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HISTOGUARD_TEST_DATA", str(shared_data))
    result = run_demo(tmp_path, progress=False)
    assert result.source == "real"
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
