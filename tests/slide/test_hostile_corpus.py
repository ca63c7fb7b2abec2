"""Issue 15: hundreds of hostile slide files end in a typed error or open with damage reported.

The corpus (tests/slide/_hostile.py) is made at test time from three small generated pyramids
(JPEG, uncompressed, deflate) and, when the shared data is there, from OpenSlide's real
CMU-1-Small-Region.svs. Each file goes through what ``histoguard info`` runs and through one
``histoguard tile`` batch with the good slides in it. Both run in a child process under a
timeout, so a file that hangs fails the test (and is named) instead of hanging the suite.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from histoguard.cli import app
from tests.conftest import REPO_ROOT, shared_data_dir
from tests.slide._hostile import Variant, make_bases, make_corpus, must_refuse

#: Seconds the whole corpus may take: info needs about 5 s of CPU and the batch about 20 s, so
#: these leave room for a loaded machine and still end a hang.
INFO_TIMEOUT, BATCH_TIMEOUT = 120, 300


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Variant], list[Path]]:
    """The hostile variants and the good slides they were made from."""
    root = tmp_path_factory.mktemp("hostile")
    bases = make_bases(root / "good")
    real = shared_data_dir() / "wsi" / "CMU-1-Small-Region.svs"
    return make_corpus(root / "corpus", bases, real if real.is_file() else None), bases


def _run(command: str, paths: list[Path], target: Path, timeout: int) -> str:
    """Run ``python -m tests.slide._hostile command`` on ``paths``; returns its stderr."""
    listing = target.parent / f"{command}-inputs.txt"
    listing.write_text("\n".join(str(p) for p in paths))
    args = [sys.executable, "-m", "tests.slide._hostile", command, str(listing), str(target)]
    try:
        done = subprocess.run(
            args, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"`{command}` on the corpus ran past {timeout} s: {_last_started(target)}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    return done.stderr


def _last_started(target: Path) -> str:
    """Which file was last finished: info logs a line per file, the batch rewrites its summary."""
    log = target / "tiling_summary.csv" if target.is_dir() else target
    if log.is_file():
        lines = log.read_text().splitlines()
        return f"it hung after {len(lines)} lines (last: {lines[-1] if lines else 'none'})"
    return "nothing finished"


def test_corpus_covers_every_class(corpus: tuple[list[Variant], list[Path]]) -> None:
    variants, _ = corpus
    assert len(variants) >= 300
    assert {v.kind for v in variants} == {
        "truncate", "zeros", "bitflip", "offsets", "counts", "sparse", "tilewidth",
        "tilelength", "compression", "bitspersample", "samplesperpixel", "photometric",
        "imagesize",
    }  # fmt: skip
    assert len({v.path for v in variants}) == len(variants)


def test_info_gives_a_typed_error_or_opens(
    corpus: tuple[list[Variant], list[Path]], tmp_path: Path
) -> None:
    variants, bases = corpus
    log = tmp_path / "info.jsonl"
    _run("info", [*bases, *(v.path for v in variants)], log, INFO_TIMEOUT)
    outcomes = {Path(line["path"]): line for line in map(json.loads, log.read_text().splitlines())}
    assert len(outcomes) == len(variants) + len(bases)
    untyped = [f"{p.name}: {o['error']}: {o['message']}" for p, o in outcomes.items()
               if o["outcome"] == "untyped"]  # fmt: skip
    assert not untyped, untyped
    for path, outcome in outcomes.items():
        if outcome["outcome"] == "typed":
            assert path.name in outcome["message"], outcome
    assert all(outcomes[base]["outcome"] == "ok" for base in bases)
    refuse = [v.path for v in variants if must_refuse(v)]
    accepted = [path.name for path in refuse if outcomes[path]["outcome"] != "typed"]
    assert not accepted, f"the preflight let through: {accepted}"
    for variant in variants:  # an empty tile opens, but info says how many there are
        if variant.kind == "sparse" and outcomes[variant.path]["outcome"] == "ok":
            assert outcomes[variant.path]["sparse_tiles"] > 0, variant


def test_one_batch_finishes_its_good_slides(
    corpus: tuple[list[Variant], list[Path]], tmp_path: Path
) -> None:
    variants, bases = corpus
    out = tmp_path / "tiles"
    # The good slides first, in the middle and last: none may be hurt by its neighbours.
    hostile = [v.path for v in variants]
    middle = len(hostile) // 2
    inputs = [bases[0], *hostile[:middle], bases[1], *hostile[middle:], bases[2]]
    _run("tile", inputs, out, BATCH_TIMEOUT)
    with (out / "tiling_summary.csv").open() as f:
        rows = {Path(row["slide"]): row for row in csv.DictReader(f)}
    assert set(rows) == set(inputs)
    for base in bases:
        row = rows[base]
        assert (row["status"], row["flagged"], row["n_unreadable"]) == ("done", "False", "0"), row
        assert int(row["n_tiles"]) > 0, row
    for variant in variants:
        row = rows[variant.path]
        if row["status"] == "failed":
            assert "unexpected" not in row["message"], row
            assert variant.path.name in row["message"], row
        else:
            assert row["status"] == "done", row
            assert not must_refuse(variant), f"the preflight let through {variant.path.name}"
            if int(row["n_unreadable"]):  # damaged tiles: counted, left out and named
                assert row["flagged"] == "True", row
                assert variant.path.name in row["message"], row


def test_cli_info_names_the_file_and_exits_1(corpus: tuple[list[Variant], list[Path]]) -> None:
    # One refused variant of each class through the command itself: message, no traceback.
    variants, _ = corpus
    firsts = {v.kind: v for v in reversed(variants) if must_refuse(v)}
    assert len(firsts) >= 9
    for variant in firsts.values():
        result = CliRunner().invoke(app, ["info", str(variant.path)], prog_name="histoguard")
        assert result.exit_code == 1, result.output
        assert "Traceback" not in result.output
        assert variant.path.name in result.output.replace("\n", ""), result.output
