"""Tiling slides end to end: exact tiles on known tissue, outputs, resume, bad input, crashes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from histoguard import TilingConfig, read_coords_file, tile_slide, tile_slides
from histoguard._version import __version__
from histoguard.slide._tile_job import SUMMARY_NAME
from tests.conftest import KNOWN_TISSUE
from tests.slide.tiff_surgery import corrupt_tiles, make_bad_inputs

CONFIG = TilingConfig(mpp=0.5, tile_size=128, min_tissue_fraction=0.5)


def _summary(out: Path) -> list[dict[str, str]]:
    import csv

    with (out / SUMMARY_NAME).open() as f:
        return list(csv.DictReader(f))


def test_tiles_cover_exactly_the_known_tissue(known_slide: Path, tmp_path: Path) -> None:
    result = tile_slide(known_slide, tmp_path, CONFIG)
    tiles = read_coords_file(tmp_path / "known.h5")
    # 256 px level-0 footprint; the tissue rectangle holds 8 x 6 whole tiles.
    expected = {
        (x, y)
        for x in range(KNOWN_TISSUE.x0, KNOWN_TISSUE.x1, 256)
        for y in range(KNOWN_TISSUE.y0, KNOWN_TISSUE.y1, 256)
    }
    assert {tuple(c) for c in tiles.coords.tolist()} == expected
    assert result.n_tiles == len(expected) == 48
    assert (result.status, result.flagged) == ("done", False)
    assert np.all(tiles.qc["tissue_fraction"] > 0.9)
    assert np.all(tiles.qc["background_fraction"] < 0.05)
    assert np.all(tiles.qc["blur_score"] > 0)


def test_tile_file_layout_is_clam_compatible(known_slide: Path, tmp_path: Path) -> None:
    tile_slide(known_slide, tmp_path, CONFIG)
    with h5py.File(tmp_path / "known.h5", "r") as h5:
        assert h5["coords"].dtype == np.int64 and h5["coords"].shape == (48, 2)
        attrs = dict(h5.attrs)
        assert attrs["mpp"] == 0.5 and attrs["tile_size"] == 128
        assert attrs["level"] == 1 and attrs["level0_tile_size"] == 256
        assert attrs["slide_path"] == str(known_slide.resolve())
        assert attrs["histoguard_version"] == __version__
        assert h5["coords"].attrs["patch_level"] == 1 and h5["coords"].attrs["patch_size"] == 128
    assert Image.open(tmp_path / "known.thumbnail.png").size[0] > 0
    geojson = json.loads((tmp_path / "known.tissue.geojson").read_text())
    assert geojson["type"] == "FeatureCollection" and len(geojson["features"]) == 1
    xs = [p[0] for p in geojson["features"][0]["geometry"]["coordinates"][0]]
    assert min(xs) == pytest.approx(KNOWN_TISSUE.x0, abs=24)
    assert max(xs) == pytest.approx(KNOWN_TISSUE.x1, abs=24)


def test_rerun_skips_finished_slides_and_redoes_changed_settings(
    known_slide: Path, tmp_path: Path
) -> None:
    first = tile_slides([known_slide], tmp_path, CONFIG, progress=False)
    assert [r.status for r in first.results] == ["done"]
    mtime = (tmp_path / "known.h5").stat().st_mtime_ns
    second = tile_slides([known_slide], tmp_path, CONFIG, progress=False)
    assert [r.status for r in second.results] == ["skipped"]
    assert second.results[0].n_tiles == 48
    assert (tmp_path / "known.h5").stat().st_mtime_ns == mtime
    changed = TilingConfig(mpp=1.0, tile_size=128, min_tissue_fraction=0.5)
    third = tile_slides([known_slide], tmp_path, changed, progress=False)
    assert [r.status for r in third.results] == ["done"]
    assert read_coords_file(tmp_path / "known.h5").attrs["level"] == 2


def test_a_damaged_output_is_redone(known_slide: Path, tmp_path: Path) -> None:
    tile_slides([known_slide], tmp_path, CONFIG, progress=False)
    with h5py.File(tmp_path / "known.h5", "r+") as h5:
        h5["coords"][0, 0] += 1  # still opens, but is no longer what was written
    rerun = tile_slides([known_slide], tmp_path, CONFIG, progress=False)
    assert [r.status for r in rerun.results] == ["done"]
    read_coords_file(tmp_path / "known.h5")


def test_bad_inputs_fail_and_the_batch_finishes(known_slide: Path, tmp_path: Path) -> None:
    bad = make_bad_inputs(tmp_path / "bad")
    no_mpp = tmp_path / "bad" / "no_mpp.png"
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(no_mpp)
    inputs = [bad["missing"], bad["empty"], known_slide, bad["text_svs"], bad["huge"]]
    inputs += [bad["looping"], bad["truncated"], no_mpp]
    report = tile_slides(inputs, tmp_path / "out", CONFIG, progress=False)
    by_name = {r.slide.name: r for r in report.results}
    assert by_name["known.tiff"].status == "done"
    expected_words = {
        "missing.svs": "SlideNotFound|no such file|does not exist",
        "empty.svs": "empty",
        "text_svs.svs": "not",
        "huge.tiff": "2147483648",
        "looping.tiff": "loops",
        "truncated.tiff": "truncated",
        "no_mpp.png": "--mpp-override",
    }
    for name, words in expected_words.items():
        result = by_name[name]
        assert result.status == "failed", name
        assert name in result.message
        assert any(w.lower() in result.message.lower() for w in words.split("|")), result.message
    rows = _summary(tmp_path / "out")
    assert [row["status"] for row in rows].count("failed") == 7


def test_corrupt_tiles_flag_the_slide(known_slide: Path, tmp_path: Path) -> None:
    damaged = tmp_path / "damaged.tiff"
    shutil.copy(known_slide, damaged)
    corrupt_tiles(damaged, page=0, tiles=[16 * 4 + 4, 16 * 5 + 6])  # inside the tissue
    config = TilingConfig(mpp=0.25, tile_size=256, min_tissue_fraction=0.5)
    report = tile_slides([damaged], tmp_path / "out", config, progress=False)
    result = report.results[0]
    assert (result.status, result.flagged, result.n_unreadable) == ("done", True, 2)
    assert "damaged.tiff" in result.message
    tiles = read_coords_file(tmp_path / "out" / "damaged.h5")
    assert [1024, 1024] not in tiles.coords.tolist()
    assert tiles.attrs["n_unreadable_tiles"] == 2
    assert len(tiles.coords) == 8 * 6 - 2
    assert _summary(tmp_path / "out")[0]["flagged"] == "True"


def test_same_named_slides_do_not_collide(known_slide: Path, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    shutil.copy(known_slide, tmp_path / "a" / "s.tiff")
    shutil.copy(known_slide, tmp_path / "b" / "s.tiff")
    report = tile_slides([tmp_path / "a", tmp_path / "b"], tmp_path / "out", CONFIG, progress=False)
    assert [r.status for r in report.results] == ["done", "failed"]
    assert "same name" in report.results[1].message


@pytest.mark.slow
@pytest.mark.integration
def test_kill_9_mid_batch_then_rerun(known_slide: Path, tmp_path: Path) -> None:
    slides = []
    for i in range(6):
        slides.append(tmp_path / f"slide{i}.tiff")
        shutil.copy(known_slide, slides[-1])
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "histoguard", "tile", *map(str, slides), "--out", str(out)]
    cmd += ["--mpp", "0.25", "--tile-size", "128", "--quiet", "--threads", "1"]
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not list(out.glob("slide*.h5")) and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    finished_before = {p.name for p in out.glob("slide*.h5")}
    assert 0 < len(finished_before) < 6, "the kill should land mid-batch"
    for path in out.glob("slide*.h5"):
        read_coords_file(path)  # whatever has a final name is complete
    rerun = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert rerun.returncode == 0, rerun.stderr
    rows = _summary(out)
    assert len(rows) == 6
    skipped = {Path(r["slide"]).stem + ".h5" for r in rows if r["status"] == "skipped"}
    assert skipped == finished_before
    coords = [read_coords_file(out / f"slide{i}.h5").coords for i in range(6)]
    assert all(np.array_equal(c, coords[0]) for c in coords)
    assert not list(out.glob(".*tmp-*")), "stale temporaries are cleaned up"
    assert sorted(p.name for p in out.glob("*.h5")) == [f"slide{i}.h5" for i in range(6)]


@pytest.mark.parametrize(
    ("name", "mpp_override"),
    [("CMU-1-Small-Region.svs", None), ("tcga-cr-7395-01a-01-ts1.svs", 0.25)],
)
def test_real_slides_tile_on_tissue(
    wsi_dir: Path, tmp_path: Path, name: str, mpp_override: float | None
) -> None:
    config = TilingConfig(mpp=0.5, tile_size=224, mpp_override=mpp_override)
    result = tile_slide(wsi_dir / name, tmp_path, config)
    tiles = read_coords_file(result.output)  # type: ignore[arg-type]
    assert result.n_tiles >= 20
    # Tiles sit on tissue: most of each tile's pixels are not glass.
    assert np.median(tiles.qc["background_fraction"]) < 0.2
    assert np.mean(tiles.qc["background_fraction"] < 0.5) > 0.9
    # And the glass is left out: the tiles cover only part of the slide.
    with h5py.File(result.output, "r") as h5:
        width, height = h5.attrs["level0_width"], h5.attrs["level0_height"]
    covered = result.n_tiles * tiles.attrs["level0_tile_size"] ** 2 / (width * height)
    assert covered < 0.9


def test_damage_on_a_single_level_slide_is_isolated_not_fatal(tmp_path: Path) -> None:
    # With no pyramid, the thumbnail itself must be read from the damaged level.
    from histoguard.slide import open_slide, write_synthetic_slide

    slide_path = write_synthetic_slide(
        tmp_path / "flat.tiff", width=4096, height=3072, mpp=0.25, shapes=[KNOWN_TISSUE], levels=1
    )
    corrupt_tiles(slide_path, page=0, tiles=[16 * 4 + 4])  # level-0 [1024, 1280)²
    with open_slide(slide_path) as slide:
        thumbnail = slide.get_thumbnail(1024)  # downsample 4: the damage is 64 x 64 px
    rows, cols = np.nonzero(thumbnail.unreadable)
    assert (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1) == (256, 320, 256, 320)
    assert "flat.tiff" in thumbnail.first_error
    config = TilingConfig(mpp=0.25, tile_size=256, min_tissue_fraction=0.5)
    result = tile_slides([slide_path], tmp_path / "out", config, progress=False).results[0]
    assert (result.status, result.flagged, result.n_unreadable) == ("done", True, 1)
    assert result.n_tiles == 8 * 6 - 1


@pytest.mark.parametrize("layout", ["empty", "tile folders"])
def test_inputs_without_a_slide_are_an_error_not_zero_done(layout: str, tmp_path: Path) -> None:
    from histoguard.errors import NoSlidesError

    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "notes.txt").write_text("not a slide\n")
    if layout == "tile folders":
        (inputs / "p1").mkdir()
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(inputs / "p1" / "t.png")
    with pytest.raises(NoSlidesError) as caught:
        tile_slides([inputs], tmp_path / "out", CONFIG)
    message = str(caught.value)
    assert str(inputs) in message and ".svs" in message
    assert ("histoguard extract" in message) == (layout == "tile folders")
    assert not (tmp_path / "out").exists()  # nothing written for nothing done


def test_only_the_top_level_tile_slides_draws_the_overview(
    known_slide: Path, tmp_path: Path
) -> None:
    from histoguard.slide import tile_slide as tile_slide_without_drawing

    tile_slide_without_drawing(known_slide, tmp_path / "plain", CONFIG)
    assert (tmp_path / "plain" / "known.h5").is_file()
    assert not (tmp_path / "plain" / "known.thumbnail.png").exists()

    calls: list[tuple[int, float]] = []

    def renderer(thumbnail, downsample, polygons, coords, tile_size0):  # type: ignore[no-untyped-def]
        calls.append((len(coords), tile_size0))
        return Image.fromarray(thumbnail)

    tile_slide_without_drawing(known_slide, tmp_path / "custom", CONFIG, overview=renderer)
    assert calls == [(48, 256)]
    assert (tmp_path / "custom" / "known.thumbnail.png").is_file()
    tile_slides([known_slide], tmp_path / "drawn", CONFIG)  # histoguard.tile_slides
    assert (tmp_path / "drawn" / "known.thumbnail.png").is_file()
