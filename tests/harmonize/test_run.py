"""`harmonize_feature_files` and `histoguard harmonize`: fit on training slides only, write
harmonised feature files, resume, isolate bad files, label-free new centers."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from histoguard.cli import app
from histoguard.errors import ConfigError
from histoguard.features import read_feature_file, write_feature_file
from histoguard.harmonize import (
    HarmonizeConfig,
    harmonize_feature_files,
    harmonizer_sha256,
    load_harmonizer,
)

DIM = 8
SHIFT = {"A": 0.0, "B": 3.0, "C": -4.0}


def _write_slide(folder: Path, slide: str, center: str, label: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 20 + seed % 7
    x = rng.normal(size=(n, DIM)) + SHIFT[center] + (label == "tumour") * 0.5
    coords = np.stack([np.arange(n) * 224, np.zeros(n, dtype=np.int64)], axis=1)
    write_feature_file(folder / f"{slide}.h5", x, coords, {"encoder": "hg-test", "mpp": 0.5})


def _cohort(
    tmp_path: Path, *, split: bool = True, new_center: bool = False, labels: bool = True
) -> tuple[Path, Path]:
    """Centers A and B (4 train + 2 test slides each), and C (4 test slides) when asked."""
    features = tmp_path / "features"
    rows = []
    centers = ["A", "B"] + (["C"] if new_center else [])
    for center in centers:
        for i in range(6 if center != "C" else 4):
            slide = f"{center}{i}"
            label = ("normal", "tumour")[i % 2]
            part = "test" if center == "C" or i >= 4 else "train"
            _write_slide(features, slide, center, label, seed=len(rows))
            rows.append({"slide_id": slide, "center": center, "label": label, "split": part})
    table = tmp_path / "cohort.csv"
    columns = ["slide_id", "center"] + (["label"] if labels else []) + (["split"] if split else [])
    with table.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return features, table


def test_writes_harmonised_files_with_provenance_and_the_harmoniser(tmp_path: Path) -> None:
    features, table = _cohort(tmp_path)
    out = tmp_path / "out"
    report = harmonize_feature_files(features, table, out)
    assert report.batch.counts()["done"] == 12
    assert report.fitted_slides == ("A0", "A1", "A2", "A3", "B0", "B1", "B2", "B3")
    sha = harmonizer_sha256(out / "harmonizer")
    assert sha == report.harmonizer_sha256
    before, after = read_feature_file(features / "B5.h5"), read_feature_file(out / "B5.h5")
    assert after.source_format == "histoguard"
    assert after.attrs["encoder"] == "hg-test" and after.attrs["mpp"] == 0.5
    assert after.attrs["harmonizer"] == f"combat (parametric) sha256:{sha}"
    np.testing.assert_array_equal(after.coords, before.coords)
    # The center shift is gone: B's mean now sits near A's.
    a_mean = read_feature_file(out / "A5.h5").features.mean()
    assert abs(after.features.mean() - a_mean) < 1.0 < abs(before.features.mean() - a_mean)
    assert load_harmonizer(out / "harmonizer").centers == ("A", "B")


def test_fit_uses_training_slides_only(tmp_path: Path) -> None:
    features, table = _cohort(tmp_path)
    harmonize_feature_files(features, table, tmp_path / "first")
    _write_slide(features, "A5", "A", "tumour", seed=99)  # a test-split slide changes
    harmonize_feature_files(features, table, tmp_path / "second")
    first = harmonizer_sha256(tmp_path / "first" / "harmonizer")
    assert harmonizer_sha256(tmp_path / "second" / "harmonizer") == first


def test_without_a_split_column_every_slide_trains(tmp_path: Path) -> None:
    features, table = _cohort(tmp_path, split=False)
    report = harmonize_feature_files(features, table, tmp_path / "out")
    assert len(report.fitted_slides) == 12


def test_a_rerun_skips_finished_slides_and_redoes_changed_ones(tmp_path: Path) -> None:
    features, table = _cohort(tmp_path)
    out = tmp_path / "out"
    harmonize_feature_files(features, table, out)
    again = harmonize_feature_files(features, table, out)
    assert again.batch.counts()["skipped"] == 12
    _write_slide(features, "B5", "B", "tumour", seed=77)  # test slide: harmoniser unchanged
    third = harmonize_feature_files(features, table, out)
    assert [r.slide.stem for r in third.batch.results if r.status == "done"] == ["B5"]


def test_a_bad_file_fails_its_slide_and_the_batch_finishes(tmp_path: Path) -> None:
    features, table = _cohort(tmp_path)
    (features / "A5.h5").write_bytes(b"not hdf5")
    (features / "B1.h5").unlink()  # a training slide: left out of the fit, reported
    report = harmonize_feature_files(features, table, tmp_path / "out")
    failed = {r.slide.stem: r.message for r in report.batch.failed}
    assert set(failed) == {"A5", "B1"}
    assert "A5.h5" in failed["A5"]
    assert report.batch.counts()["done"] == 10
    assert any("B1" in w for w in report.warnings)
    assert "B1" not in report.fitted_slides


def test_an_unknown_center_fails_per_slide_naming_the_fix(tmp_path: Path) -> None:
    features, table = _cohort(tmp_path, new_center=True)
    report = harmonize_feature_files(features, table, tmp_path / "out")
    failed = {r.slide.stem: r.message for r in report.batch.failed}
    assert set(failed) == {"C0", "C1", "C2", "C3"}
    assert "--label-free" in failed["C0"]
    assert report.batch.counts()["done"] == 12


def test_label_free_fits_a_new_center_and_never_reads_labels(tmp_path: Path) -> None:
    features, table = _cohort(tmp_path, new_center=True)
    config = HarmonizeConfig(label_free=True, min_slides=3)
    report = harmonize_feature_files(features, table, tmp_path / "out", config=config)
    assert report.new_centers == ("C",) and not report.batch.failed
    assert any("label-free" in w for w in report.warnings)
    # The same run on a table whose labels are scrambled, or absent, gives the same harmoniser.
    text = table.read_text().replace("tumour", "X").replace("normal", "tumour")
    table.write_text(text.replace("X", "normal"))
    scrambled = harmonize_feature_files(features, table, tmp_path / "scrambled", config=config)
    _, no_labels = _cohort(tmp_path / "copy", new_center=True, labels=False)
    bare = harmonize_feature_files(features, no_labels, tmp_path / "bare", config=config)
    assert scrambled.harmonizer_sha256 == report.harmonizer_sha256 == bare.harmonizer_sha256
    # With labels the fit differs (they are covariates), so the test above can fail.
    labelled = harmonize_feature_files(features, table, tmp_path / "labelled")
    assert labelled.harmonizer_sha256 != report.harmonizer_sha256


def test_label_free_with_too_few_slides_fails_those_slides(tmp_path: Path) -> None:
    features, table = _cohort(tmp_path, new_center=True)
    config = HarmonizeConfig(label_free=True, min_slides=5)
    report = harmonize_feature_files(features, table, tmp_path / "out", config=config)
    failed = {r.slide.stem: r.message for r in report.batch.failed}
    assert set(failed) == {"C0", "C1", "C2", "C3"} and "at least 5" in failed["C0"]


def test_apply_uses_a_saved_harmoniser(tmp_path: Path) -> None:
    features, table = _cohort(tmp_path)
    fitted = harmonize_feature_files(features, table, tmp_path / "fit")
    applied = harmonize_feature_files(
        features, table, tmp_path / "apply", apply=tmp_path / "fit" / "harmonizer"
    )
    assert applied.harmonizer_sha256 == fitted.harmonizer_sha256 and not applied.fitted_slides
    np.testing.assert_array_equal(
        read_feature_file(tmp_path / "apply" / "A4.h5").features,
        read_feature_file(tmp_path / "fit" / "A4.h5").features,
    )


def test_table_and_folder_mistakes_are_config_errors(tmp_path: Path) -> None:
    features, table = _cohort(tmp_path)
    with pytest.raises(ConfigError, match="another folder"):
        harmonize_feature_files(features, table, features)
    bad = tmp_path / "bad.csv"
    bad.write_text("slide_id,label\nA0,normal\n")
    with pytest.raises(ConfigError, match="center"):
        harmonize_feature_files(features, bad, tmp_path / "out")
    escaping = tmp_path / "escaping.csv"
    escaping.write_text("slide_id,center\nA0,a\n../x,b\n")
    with pytest.raises(ConfigError, match="row 3: slide_id '../x' is not a plain file name"):
        harmonize_feature_files(features, escaping, tmp_path / "out")


def test_cli_harmonizes_reports_and_maps_errors(tmp_path: Path) -> None:
    features, table = _cohort(tmp_path, new_center=True)
    out = tmp_path / "out"
    args = ["harmonize", "--features", str(features), "--cohort", str(table), "--out", str(out),
            "--method", "covbat", "--quiet"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    assert "12 done" in result.output and "--label-free" in result.output
    result = CliRunner().invoke(app, [*args, "--label-free", "--min-slides", "3"])
    assert result.exit_code == 0, result.output
    assert "warning:" in result.output and "label-free" in result.output
    assert read_feature_file(out / "C0.h5").attrs["harmonizer"].startswith("covbat")
    result = CliRunner().invoke(app, [*args[:-3], "--apply", str(tmp_path / "nowhere")])
    assert result.exit_code == 2
    assert "histoguard harmonize: error:" in result.output and "Traceback" not in result.output
