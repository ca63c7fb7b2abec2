"""The folder-level run lock (one settings set per live output folder) and the batch-level
cleanup of stale temporaries in tile, extract and train."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from histoguard.cli import app
from histoguard.core._atomic import temporary_name
from histoguard.core._batch import BatchReport
from histoguard.core._lock import RUN_LOCK_NAME, run_lock
from histoguard.core._owner import Owner, host_name, process_start
from histoguard.errors import CohortError, ConfigError
from histoguard.features import ExtractionConfig, extract_features
from histoguard.mil import TrainConfig, train
from histoguard.slide import TilingConfig, read_coords_file, tile_slides

CONFIG = TilingConfig(mpp=0.5, tile_size=128, min_tissue_fraction=0.5)
OTHER = TilingConfig(mpp=0.5, tile_size=64, min_tissue_fraction=0.5)
DEAD = Owner(host_name(), 999_999_999, 5)  # above any pid_max: never running


def _parent() -> Owner:
    """A live process on this host that is not this one (the test runner's parent)."""
    return Owner(host_name(), os.getppid(), process_start(os.getppid()))


def _lock_record(folder: Path, key: str, owner: Owner) -> Path:
    """A run lock held by ``owner`` with settings ``key``, as another run would leave it."""
    folder.mkdir(parents=True, exist_ok=True)
    run = {"owner": owner.token, "since": "2026-01-01T00:00:00Z", "nonce": "n1"}
    path = folder / RUN_LOCK_NAME
    path.write_text(json.dumps({"key": key, "runs": [run]}))
    return path


def _temporaries(folder: Path, final: str) -> tuple[Path, Path]:
    """A dead writer's and a live writer's temporary of ``final`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    dead = folder / temporary_name(final, DEAD)
    live = folder / temporary_name(final, _parent())
    for path in (dead, live):
        path.write_bytes(b"partial")
    return dead, live


def _slides(folder: Path, known_slide: Path, n: int) -> list[Path]:
    folder.mkdir()
    for i in range(n):
        shutil.copy(known_slide, folder / f"s{i}.tiff")
    return sorted(folder.iterdir())


def test_a_live_run_with_other_settings_refuses_the_second_up_front(
    known_slide: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    lock = _lock_record(out, CONFIG.result_key(), _parent())
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(ConfigError) as caught:
        tile_slides([known_slide], out, OTHER)
    message = str(caught.value)
    assert str(out) in message and f"pid {os.getppid()} on host {host_name()}" in message
    assert "since 2026-01-01T00:00:00Z" in message and "another --out" in message
    assert sorted(p.name for p in out.iterdir()) == before, "the refused run wrote nothing"
    assert json.loads(lock.read_text())["runs"][0]["nonce"] == "n1", "the holder's lock kept"
    # The CLI: exit 2 (a configuration problem), with the same message.
    cli = CliRunner().invoke(
        app, ["tile", str(known_slide), "--out", str(out), "--tile-size", "64", "--quiet"]
    )
    assert cli.exit_code == 2, cli.output
    assert "another run with different settings" in " ".join(cli.output.split())


def test_concurrent_cli_runs_with_different_tile_sizes(known_slide: Path, tmp_path: Path) -> None:
    slides = _slides(tmp_path / "slides", known_slide, 6)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "histoguard", "tile", *map(str, slides), "--out", str(out)]
    cmd += ["--mpp", "0.25", "--tile-size", "128", "--quiet", "--threads", "1"]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (out / RUN_LOCK_NAME).exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert first.poll() is None, "the first run should still be working"
        with pytest.raises(ConfigError, match=f"pid {first.pid} on host"):
            tile_slides(slides, out, TilingConfig(mpp=0.25, tile_size=64))
    finally:
        _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert json.loads((out / "tiling_config.json").read_text())["tile_size"] == 128
    sizes = {read_coords_file(p).attrs["tile_size"] for p in out.glob("s*.h5")}
    assert sizes == {128}, "no output at the refused run's size"
    assert not (out / RUN_LOCK_NAME).exists(), "released by its last holder"


def test_concurrent_runs_with_the_same_settings_share_the_work(
    known_slide: Path, tmp_path: Path
) -> None:
    slides = _slides(tmp_path / "slides", known_slide, 4)
    out = tmp_path / "out"
    reports: list[BatchReport] = []
    runs = [
        threading.Thread(target=lambda: reports.append(tile_slides(slides, out, CONFIG)))
        for _ in range(2)
    ]
    for run in runs:
        run.start()
    for run in runs:
        run.join(timeout=120)
    assert len(reports) == 2, "both runs finished without an error"
    for slide in slides:
        statuses = sorted(
            r.status for report in reports for r in report.results if r.slide == slide
        )
        assert statuses.count("done") == 1, (slide, statuses)  # tiled once, by one of them
        assert set(statuses) <= {"done", "locked", "skipped"}
    assert not (out / RUN_LOCK_NAME).exists()


def test_a_dead_holders_lock_is_taken_over(known_slide: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    _lock_record(out, CONFIG.result_key(), DEAD)
    report = tile_slides([known_slide], out, OTHER)
    assert [r.status for r in report.results] == ["done"]
    assert not (out / RUN_LOCK_NAME).exists()


def test_the_run_lock_is_shared_by_same_settings_and_released_by_the_last(
    tmp_path: Path,
) -> None:
    with run_lock(tmp_path, "a"):
        with run_lock(tmp_path, "a"):
            assert len(json.loads((tmp_path / RUN_LOCK_NAME).read_text())["runs"]) == 2
        with pytest.raises(ConfigError, match="different settings"), run_lock(tmp_path, "b"):
            pass  # pragma: no cover
        assert len(json.loads((tmp_path / RUN_LOCK_NAME).read_text())["runs"]) == 1
    assert not (tmp_path / RUN_LOCK_NAME).exists()
    with run_lock(tmp_path, "b"):  # free again: other settings now welcome
        pass


def test_config_file_keeps_the_settings_earlier_outputs_may_have(
    known_slide: Path, tmp_path: Path
) -> None:
    tile_slides([known_slide], tmp_path, CONFIG)
    assert "earlier_settings" not in json.loads((tmp_path / "tiling_config.json").read_text())
    tile_slides([known_slide], tmp_path, CONFIG)  # same settings: nothing earlier
    assert "earlier_settings" not in json.loads((tmp_path / "tiling_config.json").read_text())
    for _ in range(2):
        tile_slides([known_slide], tmp_path, OTHER)
        saved = json.loads((tmp_path / "tiling_config.json").read_text())
        assert saved["tile_size"] == 64 and saved["result_key"] == OTHER.result_key()
        assert [e["tile_size"] for e in saved["earlier_settings"]] == [128]


def test_tile_removes_dead_temporaries_and_keeps_live_ones(
    known_slide: Path, tmp_path: Path
) -> None:
    dead_summary, live_summary = _temporaries(tmp_path, "tiling_summary.csv")
    dead_config, live_config = _temporaries(tmp_path, "tiling_config.json")
    tile_slides([known_slide], tmp_path, CONFIG)
    assert not dead_summary.exists() and not dead_config.exists()
    assert live_summary.exists() and live_config.exists()


def test_extract_removes_dead_temporaries_here_and_in_tiles(
    known_slide: Path, tmp_path: Path
) -> None:
    dead_config, live_config = _temporaries(tmp_path, "extraction_config.json")
    dead_tiles, live_tiles = _temporaries(tmp_path / "tiles", "other.h5")
    config = ExtractionConfig(encoder="hg-handcrafted", tiling=CONFIG, batch_size=16, readers=0)
    report = extract_features([known_slide], tmp_path, config)
    assert [r.status for r in report.results] == ["done"]
    assert not dead_config.exists() and not dead_tiles.exists()
    assert live_config.exists() and live_tiles.exists()
    assert not (tmp_path / RUN_LOCK_NAME).exists()


def test_train_removes_its_own_dead_temporaries_first(tmp_path: Path) -> None:
    out = tmp_path / "run"
    dead = [
        *_temporaries(out, "metrics.json")[:1],
        *_temporaries(out / "fold_0", "model.safetensors")[:1],
        *_temporaries(out / "fold_1-seed1" / "harmonizer", "harmonizer.json")[:1],
    ]
    live = [p for p in out.rglob(".*.tmp-*") if p not in dead]
    assert len(live) == 3
    (tmp_path / "cohort.csv").write_text("slide_id,label\n")
    config = TrainConfig(cohort=tmp_path / "cohort.csv", features=tmp_path / "feats", out=out)
    with pytest.raises(CohortError):
        train(config)  # fails on the cohort, after the cleanup
    assert not any(p.exists() for p in dead)
    assert all(p.exists() for p in live)
