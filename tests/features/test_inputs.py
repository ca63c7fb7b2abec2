"""What extraction takes as input: one tile folder per slide, and no slide at all is an error."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from histoguard.cli import app
from histoguard.errors import NoSlidesError
from histoguard.features import ExtractionConfig, extract_features, read_feature_file
from histoguard.slide import TilingConfig

runner = CliRunner()
CONFIG = ExtractionConfig(
    encoder="hg-handcrafted",
    tiling=TilingConfig(mpp=0.5, tile_size=128, min_tissue_fraction=0.5),
    batch_size=16,
    readers=0,
)


def _tile_folders(root: Path, counts: dict[str, int]) -> Path:
    """``root/<name>/t<i>.png`` with ``counts[name]`` random 64 px tiles each."""
    rng = np.random.default_rng(0)
    for name, count in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            tile = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
            Image.fromarray(tile).save(root / name / f"t{i}.png")
    return root


def test_per_patient_tile_folders_give_one_feature_file_each(tmp_path: Path) -> None:
    root = _tile_folders(tmp_path / "tiles", {"TCGA-01": 3, "TCGA-02": 5})
    report = extract_features([root], tmp_path / "out", CONFIG)
    assert [(r.slide.name, r.status, r.n_tiles) for r in report.results] == [
        ("TCGA-01", "done", 3),
        ("TCGA-02", "done", 5),
    ]
    assert sorted(p.name for p in (tmp_path / "out").glob("*.h5")) == ["TCGA-01.h5", "TCGA-02.h5"]
    second = read_feature_file(tmp_path / "out" / "TCGA-02.h5")
    assert second.tile_names == tuple(f"t{i}.png" for i in range(5))


def test_extract_cli_on_per_patient_tile_folders(tmp_path: Path) -> None:
    root = _tile_folders(tmp_path / "tiles", {"p1": 2, "p2": 2})
    args = ["extract", str(root), "--encoder", "hg-handcrafted", "--readers", "0", "-q"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "2 done, 0 skipped, 0 failed" in result.output


def test_extract_without_a_slide_raises_and_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(NoSlidesError, match="no slides found") as caught:
        extract_features([tmp_path / "empty"], tmp_path / "out", CONFIG)
    assert str(tmp_path / "empty") in str(caught.value)
    assert "tile images" in str(caught.value)  # says what was looked for
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["tile", "extract"])
def test_cli_on_an_empty_folder_exits_non_zero_and_says_so(command: str, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    args = [command, str(tmp_path / "empty"), "--out", str(tmp_path / "out"), "-q"]
    if command == "extract":
        args += ["--encoder", "hg-handcrafted"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert "no slides found" in result.output and str(tmp_path / "empty") in result.output
    assert "0 done" not in result.output and "Traceback" not in result.output


def test_feature_files_carry_tridents_patch_size_level0(known_slide: Path, tmp_path: Path) -> None:
    report = extract_features([known_slide], tmp_path, CONFIG)
    assert report.results[0].status == "done"
    with h5py.File(tmp_path / "known.h5", "r") as h5:
        # 128 px at 0.5 µm/px on a 0.25 µm/px slide: 256 level-0 pixels.
        assert h5.attrs["patch_size_level0"] == 256
        assert h5["coords"].attrs["patch_size_level0"] == 256  # where TRIDENT reads it
        assert isinstance(h5["coords"].attrs["patch_size_level0"], np.integer)
        # CLAM's names stay.
        assert h5["coords"].attrs["patch_level"] == 1 and h5["coords"].attrs["patch_size"] == 128
    assert read_feature_file(tmp_path / "known.h5").source_format == "histoguard"
