"""The audit end to end: feature files + cohort, and real tiles + an encoder (+ a slide model,
one fold or a k-fold ensemble), through the library and the CLI; audit.json's keys and schema
version, the typed result's JSON round trip, the HTML report, reproducibility."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from histoguard.cli import app
from histoguard.errors import AuditDataError
from histoguard.features import write_feature_file
from histoguard.mil import build_model
from histoguard.mil._checkpoint import save_model
from histoguard.robustness import (
    AUDIT_PARTS,
    SCHEMA_VERSION,
    AttackSettings,
    AuditConfig,
    AuditResult,
    ClusteringConfig,
    FoldEnsemble,
    RobustnessIndexConfig,
    RobustnessIndexSection,
    Skipped,
    StressConfig,
    TileDataset,
    audit_embeddings,
    load_slide_model,
    planted_embeddings,
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
    assert audit["schema_version"] == SCHEMA_VERSION
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
        ).to_dict()
        for strength in (0.0, 3.0)
    }
    clean, confounded = results[0.0], results[3.0]
    assert clean["robustness_index"]["value"] > 0.9 > 0.1 > confounded["robustness_index"]["value"]
    assert confounded["clustering_score"]["value"] < 0 < clean["clustering_score"]["value"]
    assert confounded["apd"]["in_distribution"] < clean["apd"]["in_distribution"] - 0.05


def test_a_metric_that_cannot_run_is_skipped_with_its_reason() -> None:
    one_center = planted_embeddings(n_centers=1)
    result = audit_embeddings(one_center, config=AuditConfig(parts=("robustness_index", "apd")))
    assert isinstance(result.robustness_index, Skipped) and isinstance(result.apd, Skipped)
    assert "center" in result.robustness_index.reason
    assert "center" in result.apd.reason
    assert result.to_dict()["clustering_score"] == {"skipped": "not requested"}


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


def _kfold_output(folder: Path, n_folds: int) -> Path:
    """A `train`-like output: ``fold_<i>`` model folders of differently seeded ABMILs."""
    for fold in range(n_folds):
        torch.manual_seed(fold)
        model = build_model("abmil", in_dim=256, n_classes=2)
        save_model(model, folder / f"fold_{fold}", labels=["benign", "malignant"])
    return folder


def _without_timestamps(audit: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in audit.items() if k != "metadata"}


@pytest.mark.slow
@pytest.mark.integration
def test_tile_audit_runs_every_part_and_is_reproducible(
    small_tiles: TileDataset, tmp_path: Path
) -> None:
    table = _tile_table(small_tiles, tmp_path / "tiles")
    model_dir = _kfold_output(tmp_path / "model", n_folds=2)
    first = run_audit(
        tmp_path / "a", tiles=table, encoder="hg-cnn", model=model_dir, config=SMALL
    ).to_dict()
    # A k-fold train output is audited as the ensemble of all its folds, and says so.
    folds = [str(model_dir / "fold_0"), str(model_dir / "fold_1")]
    assert first["metadata"]["slide_model"]["models"] == folds
    assert first["adversarial"]["slide"]["models"] == folds
    assert first["stress"]["slide_model"]["models"] == folds
    assert "mean" in first["adversarial"]["slide"]["combination"]
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
    assert AuditResult.from_json(tmp_path / "a" / "audit.json").to_dict() == first

    again = run_audit(
        tmp_path / "b", tiles=table, encoder="hg-cnn", model=model_dir, config=SMALL
    ).to_dict()
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


# --------------------------------------------------------------------------- the typed result


def test_audit_result_round_trips_through_json(tmp_path: Path) -> None:
    config = AuditConfig(parts=("robustness_index", "clustering_score"))
    result = audit_embeddings(planted_embeddings(n_centers=3, seed=2), config=config)
    result = result.with_metadata({"subject": "planted", "n": np.int64(3), "path": tmp_path})
    assert isinstance(result.robustness_index, RobustnessIndexSection)
    assert result.schema_version == SCHEMA_VERSION
    text = result.to_json()
    assert AuditResult.from_json(text) == result
    assert AuditResult.from_json(json.loads(text)) == result
    path = tmp_path / "audit.json"
    path.write_text(text)
    again = AuditResult.from_json(path)
    assert again == result and again.to_json() == text
    # The user-facing keys are those audit.json always had, plus the schema version.
    content = json.loads(text)
    assert set(content) == {"schema_version", "metadata", *AUDIT_PARTS}
    assert content["metadata"] == {"subject": "planted", "n": 3, "path": str(tmp_path)}
    assert {"value", "k", "k_selection", "ci", "curve", "composition", "counts"} <= set(
        content["robustness_index"]
    )
    assert content["apd"] == {"skipped": "not requested"}


def test_an_audit_json_without_schema_version_still_reads(tmp_path: Path) -> None:
    config = AuditConfig(parts=("robustness_index",))
    content = audit_embeddings(planted_embeddings(n_centers=3), config=config).to_dict()
    del content["schema_version"]
    old = AuditResult.from_json(content)
    assert isinstance(old.robustness_index, RobustnessIndexSection)
    assert old.robustness_index.value == content["robustness_index"]["value"]


def test_unreadable_or_future_audits_are_refused_with_the_file_named(tmp_path: Path) -> None:
    future = tmp_path / "future.json"
    future.write_text(json.dumps({"schema_version": "99", "metadata": {}}))
    with pytest.raises(AuditDataError, match=r"future\.json.*upgrade histoguard"):
        AuditResult.from_json(future)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(AuditDataError, match=r"broken\.json: not JSON"):
        AuditResult.from_json(broken)
    with pytest.raises(AuditDataError, match="missing.json"):
        AuditResult.from_json(tmp_path / "missing.json")
    with pytest.raises(AuditDataError, match="lacks or mistypes"):
        AuditResult.from_json({"robustness_index": {"k": 3}})


# --------------------------------------------------------------------------- k-fold models


def test_a_kfold_output_is_used_as_the_ensemble_predict_uses(tmp_path: Path) -> None:
    """`predict` averages the folds' probabilities; the audit's slide model must be that same
    ensemble (it used to be fold 0 alone), with gradients through every fold for the attack."""
    from histoguard.mil import predict

    model_dir = _kfold_output(tmp_path / "model", n_folds=3)
    loaded = load_slide_model(model_dir, embed_dim=256)
    assert isinstance(loaded.model, FoldEnsemble)
    assert loaded.folders == tuple(model_dir / f"fold_{i}" for i in range(3))
    assert loaded.describe()["n_models"] == 3
    rng = np.random.default_rng(0)
    bag = rng.normal(size=(12, 256)).astype(np.float32)
    coords = np.stack([np.arange(12), np.zeros(12)], axis=1).astype(np.int64)
    write_feature_file(tmp_path / "slide.h5", bag, coords, {})
    expected = predict(model_dir, [tmp_path / "slide.h5"], tmp_path / "pred")
    x = torch.from_numpy(bag)[None]
    probabilities, attention = loaded.model.predict(x, torch.ones(1, 12, dtype=torch.bool))
    want = [expected[0].probabilities[label] for label in loaded.labels]
    np.testing.assert_allclose(probabilities[0].numpy(), want, rtol=1e-5, atol=1e-6)
    assert attention is not None
    np.testing.assert_allclose(attention[0].numpy(), expected[0].attention, rtol=1e-5, atol=1e-7)
    # Fold 0 alone gives other probabilities: the test would catch a silent fold-0 audit.
    fold0 = load_slide_model(model_dir / "fold_0", embed_dim=256)
    assert not isinstance(fold0.model, FoldEnsemble)
    alone, _ = fold0.model.predict(x, torch.ones(1, 12, dtype=torch.bool))
    assert not np.allclose(alone[0].numpy(), want, atol=1e-4)
    # The attack needs gradients through the ensemble, into every fold.
    leaf = x.clone().requires_grad_(True)
    loaded.model(leaf, torch.ones(1, 12, dtype=torch.bool)).logits[0, 1].backward()
    assert leaf.grad is not None and float(leaf.grad.abs().sum()) > 0


def test_a_model_of_another_feature_length_is_refused(tmp_path: Path) -> None:
    model_dir = _kfold_output(tmp_path / "model", n_folds=2)
    with pytest.raises(AuditDataError, match=r"fold_0: the model takes 256-d.*38-d"):
        load_slide_model(model_dir, embed_dim=38)
    with pytest.raises(AuditDataError, match="no model.json"):
        load_slide_model(tmp_path / "empty", embed_dim=256)
