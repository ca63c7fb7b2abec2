"""The audit end to end: feature files + cohort, and real tiles + an encoder (+ a slide model),
through the library and the CLI; audit.json's keys, the HTML report, reproducibility."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from histoguard.cli import app
from histoguard.features import write_feature_file
from histoguard.mil import build_model
from histoguard.mil._train import save_model
from histoguard.robustness import (
    AUDIT_PARTS,
    AttackSettings,
    AuditConfig,
    ClusteringConfig,
    RobustnessIndexConfig,
    StressConfig,
    TileDataset,
    audit_embeddings,
    planted_embeddings,
    render_audit_html,
    run_audit,
)
from histoguard.robustness.metrics._apd import APDConfig

#: A small but complete audit: every part runs, each on a reduced budget.
SMALL = AuditConfig(
    robustness_index=RobustnessIndexConfig(max_k=40, n_bootstrap=200),
    apd=APDConfig(n_levels=2, n_seeds=2),
    clustering=ClusteringConfig(k_max=6, n_repeats=1, max_subsets=2),
    stress=StressConfig(perturbations=("blur", "rot90", "mirror"), severities=(1, 5)),
    attacks=AttackSettings(
        pgd_eps=(2 / 255, 8 / 255),
        pgd_steps=3,
        transfer_encoders=("hg-d4",),
        slide_eps=8 / 255,
        max_tiles=16,
    ),
    max_stress_tiles=16,
)


def _write_feature_cohort(folder: Path, center_strength: float) -> tuple[Path, Path]:
    """Planted embeddings as one feature file per slide, and the cohort table naming them."""
    data = planted_embeddings(
        n_centers=3, slides_per_cell=4, tiles_per_slide=20, class_strength=1.5,
        center_strength=center_strength, seed=3,
    )  # fmt: skip
    features = folder / "features"
    lines = ["slide_id,label,center"]
    for slide in dict.fromkeys(data.slide_id.tolist()):
        rows = data.slide_id == slide
        coords = np.stack([np.arange(rows.sum()), np.zeros(rows.sum())], axis=1).astype(np.int64)
        write_feature_file(features / f"{slide}.h5", data.embeddings[rows], coords, {})
        lines.append(f"{slide},{data.label[rows][0]},{data.center[rows][0]}")
    cohort = folder / "cohort.csv"
    cohort.write_text("\n".join(lines) + "\n")
    return features, cohort


@pytest.mark.integration
def test_cli_audits_feature_files_and_skips_pixel_parts(tmp_path: Path) -> None:
    features, cohort = _write_feature_cohort(tmp_path, center_strength=0.0)
    result = CliRunner().invoke(
        app,
        ["audit", "--features", str(features), "--cohort", str(cohort), "--out",
         str(tmp_path / "audit"), "--max-k", "30", "--quiet"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    audit = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert set(AUDIT_PARTS) <= set(audit)
    # The center is invisible: biology dominates every neighbourhood and every clustering.
    assert audit["robustness_index"]["value"] > 0.9
    assert audit["clustering_score"]["value"] > 0.8
    assert abs(audit["apd"]["in_distribution"]) < 0.05
    assert "--tiles" in audit["stress"]["skipped"]
    assert "--tiles" in audit["adversarial"]["skipped"]
    assert audit["metadata"]["config"]["robustness_index"]["max_k"] == 30
    html = (tmp_path / "audit" / "audit.html").read_text()
    assert html.count("<img") >= 4  # RI curve, composition, APD, clustering
    assert "Skipped: needs tile images" in html


def test_planted_center_signal_moves_every_representation_metric() -> None:
    config = AuditConfig(parts=("robustness_index", "apd", "clustering_score"))
    results = {
        strength: audit_embeddings(
            planted_embeddings(n_centers=3, class_strength=1.0, center_strength=strength, seed=1),
            config=config,
        )
        for strength in (0.0, 3.0)
    }
    clean, confounded = results[0.0], results[3.0]
    assert clean["robustness_index"]["value"] > 0.9 > 0.1 > confounded["robustness_index"]["value"]
    assert confounded["clustering_score"]["value"] < 0 < clean["clustering_score"]["value"]
    assert confounded["apd"]["in_distribution"] < clean["apd"]["in_distribution"] - 0.05


def test_a_metric_that_cannot_run_is_skipped_with_its_reason() -> None:
    one_center = planted_embeddings(n_centers=1)
    audit = audit_embeddings(one_center, config=AuditConfig(parts=("robustness_index", "apd")))
    assert "center" in audit["robustness_index"]["skipped"]
    assert "center" in audit["apd"]["skipped"]
    assert audit["clustering_score"] == {"skipped": "not requested"}


def _tile_table(tiles: TileDataset, folder: Path) -> Path:
    """The fixture's real tiles as PNG files listed in a tile table."""
    assert tiles.images is not None
    folder.mkdir(parents=True, exist_ok=True)
    table = folder / "tiles.csv"
    with table.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "center", "slide_id"])
        for i in range(len(tiles)):
            Image.fromarray(tiles.images[i]).save(folder / f"tile{i:03d}.png")
            row = [f"tile{i:03d}.png", tiles.label[i], tiles.center[i], tiles.slide_id[i]]
            writer.writerow(row)
    return table


@pytest.fixture(scope="module")
def small_tiles(colorectal_tiles: TileDataset) -> TileDataset:
    """48 real tiles, 12 per (class, center) cell, from as many different slides as possible
    (APD needs several slides per cell)."""
    rows = []
    for label in ("benign", "malignant"):
        for center in ("GlaS", "EBHI"):
            cell = np.flatnonzero(
                (colorectal_tiles.label == label) & (colorectal_tiles.center == center)
            )
            _, first = np.unique(colorectal_tiles.slide_id[cell], return_index=True)
            rest = np.setdiff1d(np.arange(len(cell)), first)
            rows.append(cell[np.concatenate([np.sort(first), rest])[:12]])
    return colorectal_tiles.subset(np.concatenate(rows))


def _without_timestamps(audit: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in audit.items() if k != "metadata"}


@pytest.mark.slow
@pytest.mark.integration
def test_tile_audit_runs_every_part_and_is_reproducible(
    small_tiles: TileDataset, tmp_path: Path
) -> None:
    table = _tile_table(small_tiles, tmp_path / "tiles")
    model_dir = tmp_path / "model"
    labels = ["benign", "malignant"]
    save_model(build_model("abmil", in_dim=256, n_classes=2), model_dir, labels=labels)
    first = run_audit(
        tmp_path / "a", tiles=table, encoder="hg-cnn", model=model_dir, config=SMALL
    ).audit
    for part in AUDIT_PARTS:
        assert "skipped" not in first[part], (part, first[part])
    pgd = first["adversarial"]["pgd"]
    assert [r["eps"] for r in pgd] == [2 / 255, 8 / 255]
    assert all(r["perturbation"]["linf_max"] <= r["eps"] + 1e-6 for r in pgd)
    assert "hg-d4" in first["adversarial"]["universal"]["transfer"]
    slide = first["adversarial"]["slide"]
    assert len(slide["slides"]) == len(slide["per_slide"]) >= 2
    assert set(first["stress"]["perturbations"]) == {"blur", "rot90", "mirror"}
    slide_stress = first["stress"]["slide_model"]
    assert slide_stress["parameters"]["n_items"] == len(slide["slides"])
    assert set(slide_stress["perturbations"]) == {"blur", "rot90", "mirror"}
    assert (tmp_path / "a" / "audit.html").stat().st_size > 10_000

    again = run_audit(
        tmp_path / "b", tiles=table, encoder="hg-cnn", model=model_dir, config=SMALL
    ).audit
    assert _without_timestamps(again) == _without_timestamps(first)


def test_cli_rejects_mixed_or_incomplete_inputs(tmp_path: Path) -> None:
    runner = CliRunner()
    mixed = runner.invoke(
        app, ["audit", "--features", "f", "--encoder", "hg-cnn", "--out", str(tmp_path)]
    )
    assert mixed.exit_code == 2
    words = " ".join(re.sub("[│╭╮╰╯─]", " ", mixed.output).split())  # unwrap the rich box
    assert "either --features with --cohort, or --tiles with --encoder" in words
    missing = runner.invoke(
        app, ["audit", "--tiles", str(tmp_path / "none.csv"), "--encoder", "hg-cnn", "--out",
              str(tmp_path / "o")],
    )  # fmt: skip
    assert missing.exit_code == 1
    assert "none.csv" in missing.output


def test_report_renders_skipped_sections_and_readings() -> None:
    page = render_audit_html(
        {
            "metadata": {"subject": "encoder <x>"},
            "robustness_index": {"skipped": "only one center"},
        }
    )
    assert "encoder &lt;x&gt;" in page  # escaped
    assert page.count("Skipped:") == 5
    assert "only one center" in page


@pytest.mark.integration
def test_cli_takes_a_pathorob_table_as_is(small_tiles: TileDataset, tmp_path: Path) -> None:
    """PathoROB layout: subset, slide_id, patch_id, biological_class, medical_center, with the
    images found by patch id under --image-root/<slide_id>/."""
    assert small_tiles.images is not None
    images = tmp_path / "images"
    table = tmp_path / "pathorob.csv"
    with table.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["subset", "slide_id", "patch_id", "biological_class", "medical_center"])
        for i in range(len(small_tiles)):
            slide = small_tiles.slide_id[i]
            (images / slide).mkdir(parents=True, exist_ok=True)
            Image.fromarray(small_tiles.images[i]).save(images / slide / f"p{i}.png")
            writer.writerow(["ID", slide, f"p{i}", small_tiles.label[i], small_tiles.center[i]])
    out = tmp_path / "audit"
    result = CliRunner().invoke(
        app,
        ["audit", "--tiles", str(table), "--image-root", str(images), "--encoder",
         "hg-handcrafted", "--parts", "robustness_index", "--max-k", "20", "--out", str(out),
         "--quiet"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    audit = json.loads((out / "audit.json").read_text())
    assert audit["metadata"]["n_tiles"] == len(small_tiles)
    assert 0.0 <= audit["robustness_index"]["value"] <= 1.0
    assert audit["apd"] == {"skipped": "not requested"}
    assert audit["adversarial"] == {"skipped": "not requested"}


def test_report_warns_when_the_index_rests_on_few_neighbours() -> None:
    """With class and center equally visible the nearest neighbours are all same-class,
    same-center: the index at small k counts a handful of neighbours, and the page says so."""
    config = AuditConfig(parts=("robustness_index",))
    crowded = audit_embeddings(planted_embeddings(n_centers=3, center_strength=1.0), config=config)
    counts = crowded["robustness_index"]["counts"]
    assert counts["SO"] + counts["OS"] < 0.05 * sum(counts.values())
    assert "Caution: only" in render_audit_html(crowded)
    mixed = audit_embeddings(planted_embeddings(n_centers=3, center_strength=0.0), config=config)
    assert "Caution: only" not in render_audit_html(mixed)
