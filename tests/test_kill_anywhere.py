"""kill -9 anywhere (issue 15): `tile`, `extract` (also on Dask), `train` and `predict` are
killed at random points, rerun, and their outputs compared with an uninterrupted run.

For each command: one uninterrupted reference run (its wall time ``D`` measured), then ``K``
kills at times drawn from a seeded RNG over ``(0, D)``, each followed by a rerun in the same
folder (``kill at t1, rerun killed at t2, ..., rerun to completion``), plus one kill aimed at
the moment a temporary file appears (inside an HDF5, PNG or JSON write). After every kill,
whatever has a final name must verify; after the last rerun the output folder must equal the
reference: the same file set, HDF5 datasets equal, CSV/JSON equal modulo timing fields, other
files byte for byte; no temporary (``.FINAL.tmp-...``) and no lock (``.STEM.lock``) left; each
slide once in the summary. ``K`` is 3 by default; ``HISTOGUARD_KILL_POINTS=20`` runs 20 per
command (docs/architecture.md, "Conventions"). The whole process group is killed, as a job
scheduler or the OOM killer of a node does, so reader processes and Dask workers die too.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pytest

from histoguard.core._atomic import parse_temporary
from histoguard.features import read_feature_file, write_feature_file
from histoguard.slide import Rectangle, read_coords_file, write_synthetic_slide

K = int(os.environ.get("HISTOGUARD_KILL_POINTS", "3"))
SEED = int(os.environ.get("HISTOGUARD_KILL_SEED", "15"))

#: HDF5 attributes that legitimately differ between two runs of the same inputs: none so far
#: (a tile or feature file records no time); listed here if one ever does.
TIMING_ATTRS: frozenset[str] = frozenset()
#: CSV columns and JSON keys that hold wall-clock times.
TIMING_FIELDS = frozenset({"seconds"})
#: Summary statuses that mean "this slide's output is there": a rerun skips what a killed
#: run finished.
FINISHED = frozenset({"done", "skipped"})


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "histoguard", *args]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "COLUMNS": "200"})
    return env


def _run(cmd: list[str], cwd: Path, out: Path | None = None) -> tuple[float, float]:
    """Run ``cmd`` to completion (it must succeed): its wall time in seconds, and when its
    first output appeared under ``out`` (0 without ``out``)."""
    start = time.monotonic()
    process = subprocess.Popen(
        cmd, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    first = 0.0
    while out is not None and not first and process.poll() is None:
        if out.is_dir() and any(out.iterdir()):
            first = time.monotonic() - start
        time.sleep(0.01)
    output, _ = process.communicate()
    assert process.returncode == 0, f"{' '.join(cmd)}\n{output.decode()}"
    return time.monotonic() - start, first


def _temporaries(out: Path) -> list[Path]:
    return [p for p in out.rglob(".*") if parse_temporary(p.name) is not None]


def _locks(out: Path) -> list[Path]:
    return [p for p in out.rglob(".*") if p.name.endswith((".lock", ".lock.break"))]


def _kill(process: subprocess.Popen[bytes]) -> None:
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _start(cmd: list[str], cwd: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        cmd, cwd=cwd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip


def _kill_at(cmd: list[str], cwd: Path, at: float) -> bool:
    """Start ``cmd`` and kill -9 its process group ``at`` seconds later; False if it had
    already finished."""
    process = _start(cmd, cwd)
    try:
        process.wait(timeout=at)
    except subprocess.TimeoutExpired:
        _kill(process)
        return True
    return False


def _kill_in_write(cmd: list[str], cwd: Path, out: Path, timeout: float) -> bool:
    """Start ``cmd`` and kill -9 it the moment a temporary file appears under ``out``; False if
    it finished (or ``timeout`` passed) without one being seen."""
    process = _start(cmd, cwd)
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        if out.is_dir() and _temporaries(out):
            _kill(process)
            return True
    _kill(process) if process.poll() is None else None
    return False


def _h5_tree(path: Path, root: Path) -> dict[str, object]:
    """Every dataset (as an array) and attribute (``name@attr``) of an HDF5 file."""
    tree: dict[str, object] = {}
    with h5py.File(path, "r") as h5:

        def visit(name: str, node: h5py.HLObject) -> None:
            if isinstance(node, h5py.Dataset):
                tree[name] = node[()]
            for key, value in node.attrs.items():
                if key not in TIMING_ATTRS:
                    tree[f"{name}@{key}"] = _unrooted(value, root)

        visit("/", h5)
        h5.visititems(visit)
    return tree


def _unrooted(value: object, root: Path) -> object:
    """``value`` with the output folder's path written as ``<out>``: folders differ by run."""
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    return value.replace(str(root), "<out>") if isinstance(value, str) else value


def _text(path: Path, root: Path) -> str:
    return path.read_text().replace(str(root), "<out>")


def _csv_rows(path: Path, root: Path) -> list[dict[str, str]]:
    rows = list(csv.DictReader(io.StringIO(_text(path, root))))
    for row in rows:
        for key in TIMING_FIELDS & row.keys():
            row[key] = "<time>"
        if row.get("status") in FINISHED:
            row["status"] = "finished"
    return rows


def _json_value(value: object) -> object:
    if isinstance(value, dict):
        return {k: "<time>" if k in TIMING_FIELDS else _json_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    return value


def _equal_values(a: object, b: object) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        if a.dtype.kind in "fc" and b.dtype.kind in "fc":
            return a.shape == b.shape and np.allclose(a, b, rtol=1e-6, atol=1e-7, equal_nan=True)
        return a.shape == b.shape and bool(np.array_equal(a, b))
    return bool(a == b)


def _differences(reference: Path, out: Path) -> list[str]:
    """What differs between two output folders, one line per problem; empty when equal."""
    problems = []
    ref_files = {p.relative_to(reference) for p in reference.rglob("*") if p.is_file()}
    out_files = {p.relative_to(out) for p in out.rglob("*") if p.is_file()}
    problems += [f"lost: {p}" for p in sorted(ref_files - out_files)]
    problems += [f"extra: {p}" for p in sorted(out_files - ref_files)]
    for rel in sorted(ref_files & out_files):
        a, b = reference / rel, out / rel
        if rel.suffix == ".h5":
            ta, tb = _h5_tree(a, reference), _h5_tree(b, out)
            if ta.keys() != tb.keys():
                problems.append(f"{rel}: members {sorted(ta.keys() ^ tb.keys())}")
            problems += [
                f"{rel}: {k} differs" for k in ta if k in tb and not _equal_values(ta[k], tb[k])
            ]
        elif rel.suffix == ".csv":
            if _csv_rows(a, reference) != _csv_rows(b, out):
                problems.append(f"{rel}: rows differ")
        elif rel.suffix in {".json", ".geojson"}:
            if _json_value(json.loads(_text(a, reference))) != _json_value(
                json.loads(_text(b, out))
            ):
                problems.append(f"{rel}: content differs")
        elif rel.suffix == ".txt":
            if _text(a, reference) != _text(b, out):
                problems.append(f"{rel}: text differs")
        elif a.read_bytes() != b.read_bytes():
            problems.append(f"{rel}: bytes differ")
    return problems


def _verify_finished(out: Path, reader: Callable[[Path], object] | None) -> None:
    """Whatever a killed run left under a final name is complete: it opens and verifies."""
    if reader is None:
        return
    for path in out.glob("*.h5"):
        reader(path)


@dataclass
class Tally:
    """What a command's kill points did, for the report."""

    command: str
    reference_s: float = 0.0
    kills: int = 0  # kill -9 while the run was still going
    late: int = 0  # the run had finished before its kill time
    in_write: int = 0  # kills that left a temporary behind (the kill landed inside a write)
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"{self.command}: reference {self.reference_s:.1f} s, {self.kills} kills "
            f"({self.in_write} inside a write, {self.late} after the end): "
            f"{len(self.problems)} problems"
        )


def kill_anywhere(
    name: str,
    cmd: list[str],
    cwd: Path,
    root: Path,
    *,
    reader: Callable[[Path], object] | None = None,
    summary: str | None = None,
    slides: int | None = None,
    points: int = K,
) -> Tally:
    """The harness: a reference run, then in another folder ``points`` kills at random times
    over the reference's span (from its first output to its end), each followed by a rerun,
    then one kill the moment a temporary appears, then a rerun to completion; the two folders
    are then compared.

    Args:
        name: the command, for messages.
        cmd: the command line with ``{out}`` standing for the output folder.
        cwd: where to run it.
        root: a folder for the reference's and the killed runs' output folders.
        reader: opens and verifies one ``.h5`` output (raises if it is damaged).
        summary: the summary table's file name, whose slide column must name each slide once.
        slides: how many slides that summary must list.
        points: how many random kill points.
    """
    tally = Tally(name)
    reference, out = root / "reference", root / "killed"
    tally.reference_s, first = _run([c.format(out=reference) for c in cmd], cwd, reference)
    rng = np.random.default_rng([SEED, sum(map(ord, name))])
    command = [c.format(out=out) for c in cmd]
    for at in rng.uniform(max(first - 0.5, 0.05), tally.reference_s, size=points):
        if _kill_at(command, cwd, float(at)):
            tally.kills += 1
            tally.in_write += bool(out.is_dir() and _temporaries(out))
        else:
            tally.late += 1
        _verify_finished(out, reader)
    if _kill_in_write(command, cwd, out, timeout=3 * tally.reference_s + 10):
        tally.kills += 1
        tally.in_write += bool(_temporaries(out))
    _verify_finished(out, reader)
    _run(command, cwd)
    problems = _differences(reference, out)
    problems += [f"stale temporary: {p.relative_to(out)}" for p in _temporaries(out)]
    problems += [f"lock left: {p.relative_to(out)}" for p in _locks(out)]
    if summary is not None:
        rows = list(csv.DictReader((out / summary).open()))
        listed = [row["slide"] for row in rows]
        if len(listed) != len(set(listed)) or len(listed) != slides:
            problems.append(f"{summary}: slides {listed}")
        if any(row["status"] not in FINISHED for row in rows):
            problems.append(f"{summary}: statuses {[row['status'] for row in rows]}")
    tally.problems = problems
    print(tally.line())
    return tally


# ------------------------------------------------------------------------------ the inputs


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 small slides (2048 x 1536 px at 0.25 µm/px, one tissue rectangle) and a cohort of 16
    bags of 8 tiles of 4-d features (classes a/b, two centers)."""
    root = tmp_path_factory.mktemp("kill")
    (root / "slides").mkdir()
    (root / "features").mkdir()
    for i in range(3):
        write_synthetic_slide(
            root / "slides" / f"s{i}.tiff", width=2048, height=1536, mpp=0.25, seed=i,
            shapes=[Rectangle(x0=256, y0=256, x1=1792, y1=1280)],
        )  # fmt: skip
    rng = np.random.default_rng(0)
    provenance = {"encoder": "hg-handcrafted", "weights_sha256": "", "tile_size": 224,
                  "patch_size_level0": 224, "mpp": 0.5}  # fmt: skip
    index = np.arange(8)
    coords = np.stack([index % 3, index // 3], axis=1).astype(np.int64) * 224
    lines = ["slide_id,label,patient_id,center"]
    for i in range(16):
        bag = (rng.normal(size=(8, 4)) + i % 2).astype(np.float32)
        write_feature_file(root / "features" / f"b{i}.h5", bag, coords, provenance)
        lines.append(f"b{i},{'ab'[i % 2]},p{i},c{i % 2}")
    (root / "cohort.csv").write_text("\n".join(lines) + "\n")
    return root


def _check(tally: Tally) -> None:
    assert tally.kills >= 1, tally.line()
    assert not tally.problems, "\n".join([tally.line(), *tally.problems])


TILE_SUMMARY, FEATURE_SUMMARY = "tiling_summary.csv", "extraction_summary.csv"
SLIDES = ["slides/s0.tiff", "slides/s1.tiff", "slides/s2.tiff"]


@pytest.mark.slow
@pytest.mark.integration
def test_tile_killed_anywhere(inputs: Path, tmp_path: Path) -> None:
    cmd = _cli("tile", *SLIDES, "--out", "{out}", "--mpp", "0.5", "--tile-size", "128")
    cmd += ["--threads", "1", "-q"]
    tally = kill_anywhere(
        "tile", cmd, inputs, tmp_path, reader=read_coords_file, summary=TILE_SUMMARY, slides=3
    )
    _check(tally)


@pytest.mark.slow
@pytest.mark.integration
def test_extract_killed_anywhere(inputs: Path, tmp_path: Path) -> None:
    cmd = _cli("extract", *SLIDES[:2], "--out", "{out}", "--encoder", "hg-handcrafted")
    cmd += ["--mpp", "0.5", "--tile-size", "128", "--readers", "0", "-q"]
    tally = kill_anywhere(
        "extract",
        cmd,
        inputs,
        tmp_path,
        reader=read_feature_file,
        summary=FEATURE_SUMMARY,
        slides=2,
    )
    _check(tally)


@pytest.mark.slow
@pytest.mark.integration
def test_extract_on_dask_killed_anywhere(inputs: Path, tmp_path: Path) -> None:
    pytest.importorskip("distributed")
    cmd = _cli("extract", *SLIDES[:2], "--out", "{out}", "--encoder", "hg-handcrafted")
    cmd += ["--mpp", "0.5", "--tile-size", "128", "--workers", "2", "-q"]
    _check(kill_anywhere("extract --workers 2", cmd, inputs, tmp_path,
                         reader=read_feature_file, summary="extraction_summary.csv", slides=2,
                         points=max(1, K // 3)))  # fmt: skip


@pytest.mark.slow
@pytest.mark.integration
def test_train_killed_anywhere(inputs: Path, tmp_path: Path) -> None:
    cmd = _cli("train", "--cohort", "cohort.csv", "--features", "features", "--out", "{out}")
    cmd += ["--epochs", "2", "--k", "2", "--n-boot", "10", "--calibration-fraction", "0", "-q"]
    _check(kill_anywhere("train", cmd, inputs, tmp_path))


@pytest.mark.slow
@pytest.mark.integration
def test_predict_killed_anywhere(inputs: Path, tmp_path: Path) -> None:
    model = tmp_path / "model"
    _run(_cli("train", "--cohort", "cohort.csv", "--features", "features", "--out", str(model),
              "--epochs", "1", "--k", "2", "--n-boot", "10", "--calibration-fraction", "0.25",
              "-q"), inputs)  # fmt: skip
    files = [f"features/b{i}.h5" for i in range(8)]
    cmd = _cli("predict", *files, "--model", str(model), "--out", "{out}")
    _check(kill_anywhere("predict", cmd, inputs, tmp_path))
