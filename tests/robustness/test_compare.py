"""Before / after: `histoguard audit --compare` on feature files and their harmonised copies."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from histoguard.cli import app
from histoguard.errors import AuditDataError
from histoguard.features import write_feature_file
from histoguard.harmonize import harmonize_feature_files
from histoguard.report import render_comparison_html
from histoguard.report._readings import comparison_reading
from histoguard.robustness import (
    COMPARISON_METRICS,
    ComparisonResult,
    LabelledEmbeddings,
    compare_embeddings,
    planted_embeddings,
)


def _feature_folder(tmp_path: Path) -> tuple[Path, Path]:
    """Planted embeddings (strong center, clear class signal) as one feature file per slide."""
    data = planted_embeddings(
        class_strength=2.0, center_strength=4.0, slides_per_cell=4, tiles_per_slide=12, dim=16
    )
    folder = tmp_path / "before"
    rows = []
    for slide in np.unique(data.slide_id):
        part = data.subset(data.slide_id == slide)
        coords = np.stack([np.arange(len(part)), np.zeros(len(part), dtype=np.int64)], axis=1)
        write_feature_file(folder / f"{slide}.h5", part.embeddings, coords, {"encoder": "x"})
        rows.append([slide, slide, part.label[0], part.center[0]])
    table = tmp_path / "cohort.csv"
    with table.open("w", newline="") as handle:
        csv.writer(handle).writerows([["slide_id", "patient_id", "label", "center"], *rows])
    return folder, table


def test_harmonise_then_compare_shows_the_center_removed_and_the_biology_kept(
    tmp_path: Path,
) -> None:
    before, table = _feature_folder(tmp_path)
    after = tmp_path / "after"
    report = harmonize_feature_files(before, table, after)
    assert not report.batch.failed
    out = tmp_path / "compare"
    args = ["audit", "--compare", str(before), str(after), "--cohort", str(table),
            "--out", str(out), "--quiet"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    content = json.loads((out / "comparison.json").read_text())
    rows = {r["metric"]: r for r in content["rows"]}
    assert list(rows) == [name for name, _ in COMPARISON_METRICS]
    site, task = rows["site_probe_auroc"], rows["task_balanced_accuracy"]
    assert site["before"] > 0.95 and site["after"] < 0.8
    assert site["ci_difference"][1] < 0
    assert task["after"] > 0.9 and abs(task["difference"]) < 0.05
    assert rows["robustness_index"]["after"] > rows["robustness_index"]["before"]
    page = (out / "comparison.html").read_text()
    assert "Did the cure remove the hospital and keep the biology?" in page
    assert "change" in page and "data:image/png;base64" in page
    assert render_comparison_html(ComparisonResult.from_json(out / "comparison.json")) != ""


def test_compare_needs_the_same_rows() -> None:
    data = planted_embeddings(slides_per_cell=3, tiles_per_slide=5, dim=8)
    other = LabelledEmbeddings(
        embeddings=data.embeddings, label=data.label[::-1], center=data.center,
        slide_id=data.slide_id,
    )  # fmt: skip
    with pytest.raises(AuditDataError, match="differ in label"):
        compare_embeddings(data, other)


def test_compare_cli_mistakes_are_usage_errors(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["audit", "--compare", str(tmp_path), str(tmp_path / "b"), "--out", str(tmp_path)]
    )
    assert result.exit_code == 2 and "--compare BEFORE AFTER takes --cohort" in result.output


def test_comparison_readings_state_uncertainty() -> None:
    kept = comparison_reading("task_balanced_accuracy", 0.80, 0.795, difference=-0.005,
                              ci_difference=(-0.008, -0.002))  # fmt: skip
    assert "the biology was kept" in kept
    unsure = comparison_reading("task_balanced_accuracy", 0.80, 0.79, difference=-0.01,
                                ci_difference=(-0.03, 0.01))  # fmt: skip
    assert "inconclusive" in unsure and "-0.010" in unsure
    site = comparison_reading("site_probe_auroc", 1.0, 0.6, (0.99, 1.0), (0.52, 0.7),
                              -0.4, (-0.48, -0.3))  # fmt: skip
    assert "inconclusive" in site and "harder to predict" in site
    overlap = comparison_reading("robustness_index", 0.4, 0.45, (0.3, 0.5), (0.35, 0.55))
    assert "within the uncertainty" in overlap
    assert comparison_reading("apd_in_distribution", None, None, reason="one center").startswith(
        "not measured: one center"
    )
