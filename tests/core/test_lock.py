"""Owners, stale temporaries and per-slide locks on a folder that several runs (and hosts) share."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from histoguard.core._atomic import atomic_output, parse_temporary, remove_stale_temporaries
from histoguard.core._batch import SlideResult, run_batch
from histoguard.core._lock import LockHolder, SlideLock, lock_path, try_lock
from histoguard.core._owner import (
    LEASE_SECONDS,
    Owner,
    host_name,
    owner_is_dead,
    process_start,
    this_owner,
)

DEAD_PID = 999_999_999  # above any pid_max
OTHER_HOST = "some_other_node"


def _parent() -> Owner:
    """A live process on this host that is not this one (the test runner's parent)."""
    return Owner(host_name(), os.getppid(), process_start(os.getppid()))


def _age(path: Path, seconds: float) -> None:
    old = time.time() - seconds
    os.utime(path, (old, old))


def _temporary(folder: Path, final: str, token: str) -> Path:
    path = folder / f".{final}.tmp-{token}-abcd1234"
    path.write_bytes(b"partial")
    return path


def test_temporary_names_carry_host_pid_and_start_time(tmp_path: Path) -> None:
    with atomic_output(tmp_path / "S1.v2.h5") as tmp:
        assert parse_temporary(tmp.name) == ("S1.v2.h5", this_owner())
        tmp.write_bytes(b"x")
    assert parse_temporary(".S1.h5.tmp-1234-abcd1234") == ("S1.h5", 1234)  # older form
    assert parse_temporary(".S1.h5.tmp-host-with-dash-1-2-abcd1234") is None
    assert parse_temporary(".S1.h5.tmp-garbage") is None
    assert process_start(os.getpid()) > 0, "Linux: /proc/PID/stat starttime is readable"


def test_only_provably_dead_owners_temporaries_are_removed(tmp_path: Path) -> None:
    here, parent = host_name(), _parent()
    dead = _temporary(tmp_path, "a.h5", f"{here}-{DEAD_PID}-5")
    reused = _temporary(tmp_path, "b.h5", f"{here}-{parent.pid}-{parent.start + 1}")
    alive = _temporary(tmp_path, "c.h5", parent.token)
    mine = _temporary(tmp_path, "d.h5", this_owner().token)
    remote_young = _temporary(tmp_path, "e.h5", f"{OTHER_HOST}-{DEAD_PID}-5")
    remote_old = _temporary(tmp_path, "f.h5", f"{OTHER_HOST}-{os.getpid()}-5")
    _age(remote_young, LEASE_SECONDS - 600)
    _age(remote_old, LEASE_SECONDS + 600)
    unparsed = tmp_path / ".g.h5.tmp-not-ours"
    unparsed.write_bytes(b"")
    folder = tmp_path / ".h.h5.tmp-1-abcd1234"  # a directory is never removed
    folder.mkdir()

    assert remove_stale_temporaries(tmp_path) == 3
    gone = {p for p in (dead, reused, remote_old) if not p.exists()}
    assert gone == {dead, reused, remote_old}
    assert all(p.exists() for p in (alive, mine, remote_young, unparsed, folder))


def test_cleaning_one_slide_parses_names_exactly(tmp_path: Path) -> None:
    token = f"{host_name()}-{DEAD_PID}-5"
    s1 = _temporary(tmp_path, "S1.h5", token)
    s1_geojson = _temporary(tmp_path, "S1.tissue.geojson", token)
    others = [_temporary(tmp_path, name, token) for name in ("S1.v2.h5", "S10.h5", "xS1.h5")]
    assert remove_stale_temporaries(tmp_path, names={"S1.h5", "S1.tissue.geojson"}) == 2
    assert not s1.exists() and not s1_geojson.exists()
    assert all(p.exists() for p in others)


def test_owner_rules() -> None:
    now = time.time()
    assert not owner_is_dead(this_owner(), now)
    assert owner_is_dead(Owner(host_name(), DEAD_PID, 0), now)
    assert not owner_is_dead(Owner(host_name(), os.getppid(), 0), now), "unknown start: keep"
    assert not owner_is_dead(Owner(OTHER_HOST, DEAD_PID, 1), now - LEASE_SECONDS + 60)
    assert owner_is_dead(Owner(OTHER_HOST, os.getpid(), 1), now - LEASE_SECONDS - 60)
    assert Owner.parse(this_owner().token) == this_owner()


def _plant_lock(folder: Path, stem: str, token: str) -> Path:
    path = lock_path(folder, stem)
    path.write_text(json.dumps({"owner": token, "since": "2026-01-01T00:00:00Z"}))
    return path


def test_a_held_lock_is_respected_and_released(tmp_path: Path) -> None:
    path = lock_path(tmp_path, "S1")
    lock = try_lock(path)
    assert isinstance(lock, SlideLock)
    again = try_lock(path)  # this process is alive: the lock holds
    assert isinstance(again, LockHolder) and again.owner == this_owner()
    assert f"pid {os.getpid()} on host {host_name()}" in again.describe()
    lock.release()
    assert not path.exists()


def test_stale_locks_are_taken_over_and_live_ones_respected(tmp_path: Path) -> None:
    dead = _plant_lock(tmp_path, "dead", f"{host_name()}-{DEAD_PID}-5")
    assert isinstance(try_lock(dead), SlideLock)
    assert json.loads(dead.read_text())["owner"] == this_owner().token

    remote = _plant_lock(tmp_path, "remote", f"{OTHER_HOST}-{DEAD_PID}-5")
    _age(remote, LEASE_SECONDS - 600)
    holder = try_lock(remote)
    assert isinstance(holder, LockHolder) and holder.owner == Owner(OTHER_HOST, DEAD_PID, 5)
    assert "2026-01-01T00:00:00Z" in holder.describe()
    _age(remote, LEASE_SECONDS + 600)
    assert isinstance(try_lock(remote), SlideLock)

    unreadable = lock_path(tmp_path, "unreadable")
    unreadable.write_bytes(b"")
    assert isinstance(try_lock(unreadable), LockHolder), "maybe being written: respected"
    _age(unreadable, 3600)
    assert isinstance(try_lock(unreadable), SlideLock)


def test_release_leaves_a_lock_that_is_no_longer_its_own(tmp_path: Path) -> None:
    path = lock_path(tmp_path, "S1")
    lock = try_lock(path)
    assert isinstance(lock, SlideLock)
    path.write_text(json.dumps({"owner": _parent().token}))
    lock.release()
    assert path.exists()


def test_batch_marks_slides_another_live_run_holds_as_locked(tmp_path: Path) -> None:
    slides = [tmp_path / "S1.tiff", tmp_path / "S2.tiff", tmp_path / "S3.tiff"]
    _plant_lock(tmp_path, "S1", _parent().token)
    stale = _plant_lock(tmp_path, "S2", f"{host_name()}-{DEAD_PID}-5")
    ran = []

    def job(slide: Path, on_progress: object) -> SlideResult:
        assert json.loads(lock_path(tmp_path, slide.stem).read_text())["owner"] == (
            this_owner().token
        ), "the job runs under this run's lock"
        ran.append(slide.stem)
        return SlideResult(slide=slide, status="done")

    report = run_batch(slides, tmp_path / "summary.csv", job)
    assert ran == ["S2", "S3"]
    assert [r.status for r in report.results] == ["locked", "done", "done"]
    assert report.counts()["locked"] == 1
    assert f"pid {os.getppid()}" in report.results[0].message
    assert "another run is working on it" in report.results[0].message
    assert f"delete {lock_path(tmp_path, 'S1')}" in report.results[0].message
    assert not stale.exists() and not lock_path(tmp_path, "S3").exists(), "released"
    with (tmp_path / "summary.csv").open() as f:
        assert [row["status"] for row in csv.DictReader(f)] == ["locked", "done", "done"]


_RUNNER = """
import json, os, sys, time
from pathlib import Path
from histoguard.core._atomic import write_bytes_atomic
from histoguard.core._batch import SlideResult, run_batch

out, go, name = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
slides = [Path(p) for p in sys.argv[4:]]

def job(slide, on_progress):
    final = out / (slide.stem + ".out")
    if final.exists():
        return SlideResult(slide=slide, status="skipped", output=final)
    fd = os.open(out / "work.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, (slide.stem + "\\n").encode())
    os.close(fd)
    time.sleep(0.4)
    write_bytes_atomic(final, slide.stem.encode())
    return SlideResult(slide=slide, status="done", output=final)

while not go.exists():
    time.sleep(0.005)
run_batch(slides, out / ("summary_" + name + ".csv"), job)
"""


def test_two_concurrent_runs_do_every_slide_exactly_once(tmp_path: Path) -> None:
    out, go = tmp_path / "out", tmp_path / "go"
    out.mkdir()
    stems = [f"slide{i}" for i in range(6)]
    slides = [str(tmp_path / f"{stem}.tiff") for stem in stems]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", _RUNNER, str(out), str(go), name, *slides],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("a", "b")
    ]
    time.sleep(1.0)  # both imported and waiting
    go.touch()
    for run in runs:
        _, err = run.communicate(timeout=60)
        assert run.returncode == 0, err
    assert sorted((out / "work.log").read_text().split()) == stems, "each slide worked on once"
    assert all((out / f"{stem}.out").read_text() == stem for stem in stems)
    statuses = {}
    for name in ("a", "b"):
        with (out / f"summary_{name}.csv").open() as f:
            statuses[name] = {Path(r["slide"]).stem: r for r in csv.DictReader(f)}
    for stem in stems:
        pair = sorted(statuses[name][stem]["status"] for name in ("a", "b"))
        assert pair in (["done", "locked"], ["done", "skipped"]), (stem, pair)
    locked = [r for rows in statuses.values() for r in rows.values() if r["status"] == "locked"]
    assert locked, "the runs overlapped: one found a slide the other was working on"
    assert all("another run is working on it" in r["message"] for r in locked)
    assert not list(out.glob(".*.lock*")) and not list(out.glob(".*tmp-*"))


def test_two_concurrent_tile_commands_on_one_out(known_slide: Path, tmp_path: Path) -> None:
    from histoguard import read_coords_file

    slides = [tmp_path / f"s{i}.tiff" for i in range(2)]
    for slide in slides:
        slide.write_bytes(known_slide.read_bytes())
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "histoguard", "tile", *map(str, slides), "--out", str(out)]
    cmd += ["--mpp", "0.5", "--tile-size", "128", "--quiet", "--threads", "1"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    runs = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=120) for run in runs]
    for run, (_, err) in zip(runs, outputs, strict=True):
        assert run.returncode == 0, err
    done = sum(int(stdout.split(" done,")[0].split()[-1]) for stdout, _ in outputs)
    assert done == len(slides), outputs  # each slide tiled by exactly one of the runs
    coords = [read_coords_file(out / f"{slide.stem}.h5").coords for slide in slides]
    assert len(coords[0]) == 48 and (coords[0] == coords[1]).all()
    assert not list(out.glob(".*.lock*")) and not list(out.glob(".*tmp-*"))


def test_tile_command_says_which_slides_another_run_holds(
    known_slide: Path, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from histoguard.cli import app

    out = tmp_path / "out"
    out.mkdir()
    _plant_lock(out, known_slide.stem, _parent().token)
    result = CliRunner().invoke(app, ["tile", str(known_slide), "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    assert "0 done, 0 skipped, 0 failed, 0 flagged, 1 locked by another run" in result.output
    assert "LOCKED" in result.output and "another run is working on it" in result.output
    assert not (out / f"{known_slide.stem}.h5").exists()
