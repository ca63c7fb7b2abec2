"""Feature extraction end to end: outputs, provenance, resume, readers, tile folders, Dask."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from histoguard.features import ExtractionConfig, extract_features, read_feature_file
from histoguard.slide import TilingConfig, read_coords_file, tile_slides

TILING = TilingConfig(mpp=0.5, tile_size=128, min_tissue_fraction=0.5)


def _config(**kwargs: object) -> ExtractionConfig:
    options: dict[str, object] = {"encoder": "hg-handcrafted", "tiling": TILING, "batch_size": 16}
    options.update(kwargs)
    return ExtractionConfig(**options)  # type: ignore[arg-type]


def test_extract_tiles_on_the_fly_and_records_provenance(known_slide: Path, tmp_path: Path) -> None:
    report = extract_features([known_slide], tmp_path, _config(readers=0), progress=False)
    assert [r.status for r in report.results] == ["done"], report.results
    features = read_feature_file(tmp_path / "known.h5")
    tiles = read_coords_file(tmp_path / "tiles" / "known.h5")
    assert np.array_equal(features.coords, tiles.coords)
    assert features.features.dtype == np.float32 and features.features.shape[0] == 48
    assert np.isfinite(features.features).all()
    attrs = features.attrs
    assert (
        attrs["encoder"] == "hg-handcrafted" and attrs["mpp"] == 0.5 and attrs["tile_size"] == 128
    )
    assert attrs["level"] == 1 and attrs["slide_path"] == str(known_slide.resolve())
    assert attrs["weights_sha256"] == "" and "histoguard_version" in attrs
    # The slide's own hash and scanner travel from the tile file, for the validation report.
    assert attrs["slide_sha256"] == hashlib.sha256(known_slide.read_bytes()).hexdigest()
    assert attrs["slide_sha256"] == tiles.attrs["slide_sha256"]
    assert attrs.get("vendor") == tiles.attrs.get("vendor")
    rerun = extract_features([known_slide], tmp_path, _config(readers=0), progress=False)
    assert [r.status for r in rerun.results] == ["skipped"]
    # A resumed batch reports what the finished file holds, in the result and the summary.
    assert rerun.results[0].n_tiles == 48
    summary = pd.read_csv(tmp_path / "extraction_summary.csv")
    assert summary["n_tiles"].tolist() == [48]


def test_reader_processes_give_the_same_features(known_slide: Path, tmp_path: Path) -> None:
    tile_slides([known_slide], tmp_path / "tiles", TILING, progress=False)
    outputs = []
    for readers in (0, 2):
        out = tmp_path / f"readers{readers}"
        config = _config(readers=readers, tiles_dir=tmp_path / "tiles")
        report = extract_features([known_slide], out, config, progress=False)
        assert report.results[0].status == "done"
        outputs.append(read_feature_file(out / "known.h5"))
    assert np.array_equal(outputs[0].features, outputs[1].features)
    assert np.array_equal(outputs[0].coords, outputs[1].coords)


def test_a_folder_of_tiles_is_one_slide(tmp_path: Path) -> None:
    folder = tmp_path / "patient7"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (100, 100, 3), dtype=np.uint8)).save(
            folder / f"t{i}.png"
        )
    (folder / "broken.png").write_text("not an image")
    report = extract_features([folder], tmp_path / "out", _config(readers=0), progress=False)
    result = report.results[0]
    assert (result.status, result.n_tiles, result.n_unreadable, result.flagged) == (
        "done",
        5,
        1,
        True,
    )
    features = read_feature_file(tmp_path / "out" / "patient7.h5")
    assert features.tile_names == tuple(f"t{i}.png" for i in range(5))
    # The resizing is said and recorded: hg-handcrafted takes 224 px, these are 100 px.
    assert features.attrs["source_tile_sizes"] == "100x100 px: 5"
    assert features.attrs["resize"] == "bilinear antialiased, center-crop"
    assert result.note.startswith("a tile folder is one bag: its 6 images are one slide")
    assert "resized to 224x224 px (bilinear antialiased, center-crop) from 100x100 px: 5" in (
        result.note
    )
    summary = (tmp_path / "out" / "extraction_summary.csv").read_text()
    assert summary.splitlines()[0].endswith(",note") and "resized to 224x224" in summary


def test_bad_inputs_do_not_stop_the_batch(known_slide: Path, tmp_path: Path) -> None:
    (tmp_path / "text.svs").write_text("hello")
    report = extract_features(
        [tmp_path / "text.svs", known_slide],
        tmp_path / "out",
        _config(readers=0),
        progress=False,
    )
    assert [r.status for r in report.results] == ["failed", "done"]
    assert "text.svs" in report.results[0].message


def test_stain_normalisation_changes_the_tiles_not_the_layout(
    known_slide: Path, shared_data: Path, tmp_path: Path
) -> None:
    reference = shared_data / "stain_refs" / "torchstain_target.png"
    plain = extract_features([known_slide], tmp_path / "a", _config(readers=0), progress=False)
    config = _config(readers=0, stain_normalize="macenko", stain_reference=reference)
    normalised = extract_features([known_slide], tmp_path / "b", config, progress=False)
    assert plain.results[0].status == normalised.results[0].status == "done"
    a, b = (read_feature_file(out / "known.h5") for out in (tmp_path / "a", tmp_path / "b"))
    assert np.array_equal(a.coords, b.coords)
    assert b.attrs["stain_normalize"] == "macenko"
    assert not np.allclose(a.features, b.features)


@pytest.mark.slow
@pytest.mark.integration
def test_dask_local_cluster_with_two_workers(
    known_slide: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    slides = []
    for i in range(3):
        slides.append(tmp_path / f"s{i}.tiff")
        shutil.copy(known_slide, slides[-1])
    broken = tmp_path / "broken.tiff"
    broken.write_bytes(b"II*\0" + bytes(64))
    report = extract_features(
        [*slides, broken], tmp_path / "out", _config(), dask_workers=2, progress=False
    )
    assert [r.status for r in report.results] == ["done"] * 3 + ["failed"], report.results
    assert str(broken) in report.results[-1].message
    # An ordinary slide failure is a result: no worker traceback reaches the terminal.
    assert "Traceback" not in capfd.readouterr().err
    local = extract_features([slides[0]], tmp_path / "local", _config(readers=0), progress=False)
    assert local.results[0].status == "done"
    a = read_feature_file(tmp_path / "out" / "s0.h5").features
    b = read_feature_file(tmp_path / "local" / "s0.h5").features
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.integration
def test_killed_dask_worker_loses_nothing(known_slide: Path, tmp_path: Path) -> None:
    psutil = pytest.importorskip("psutil")
    slides = []
    for i in range(4):
        slides.append(tmp_path / f"s{i}.tiff")
        shutil.copy(known_slide, slides[-1])
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "histoguard", "extract", *map(str, slides), "--out", str(out)]
    cmd += ["--encoder", "hg-d4", "--mpp", "0.25", "--tile-size", "96", "--workers", "2", "-q"]
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed = None
    deadline = time.monotonic() + 120
    # Kill a worker while it is encoding a slide: its tile file exists, its features do not yet.
    while killed is None and process.poll() is None and time.monotonic() < deadline:
        started = {p.stem for p in (out / "tiles").glob("s*.h5")}
        finished = {p.stem for p in out.glob("s*.h5")}
        if started - finished:
            workers = [
                p
                for p in psutil.Process(process.pid).children(recursive=True)
                if "spawn_main" in " ".join(p.cmdline())  # Dask's worker processes
            ]
            if workers:
                killed = workers[0].pid
                os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    output, _ = process.communicate(timeout=300)
    assert killed is not None, "no worker was caught mid-slide"
    assert process.returncode == 0, output
    features = sorted(p.name for p in out.glob("*.h5"))
    assert features == [f"s{i}.h5" for i in range(4)]
    for path in out.glob("*.h5"):
        read_feature_file(path)  # verified
    assert not list(out.glob(".*tmp-*"))


def test_a_dask_worker_loads_each_encoder_once() -> None:
    from histoguard.features._dask import _worker_encoder

    first = _worker_encoder(_config())
    assert _worker_encoder(_config(batch_size=4)) is first  # same encoder, other settings
    assert _worker_encoder(_config(encoder="hg-cnn")) is not first


def test_missing_tile_file_in_tiles_dir_says_what_to_do(known_slide: Path, tmp_path: Path) -> None:
    (tmp_path / "tiles").mkdir()
    config = _config(readers=0, tiles_dir=tmp_path / "tiles")
    report = extract_features([known_slide], tmp_path / "out", config, progress=False)
    assert report.results[0].status == "failed"
    assert "histoguard tile" in report.results[0].message
