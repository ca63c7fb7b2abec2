"""Issue 16, long file names: a slide named with 244 characters (or 120 two-byte ones) goes
through tile -> extract -> train -> predict; every output name stays within 255 bytes, the
original stem stays recorded and is what tables and predictions name the slide by."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import h5py
import pytest
from typer.testing import CliRunner

from histoguard.cli import app
from histoguard.core._atomic import (
    parse_temporary,
    remove_stale_temporaries,
    temporary_final,
    temporary_name,
)
from histoguard.core._lock import lock_path
from histoguard.core._names import (
    MAX_NAME_BYTES,
    MAX_STEM_BYTES,
    MAX_TEMP_FINAL_BYTES,
    bounded_stem,
    feature_file,
    recorded_stem,
)
from histoguard.core._owner import Owner, host_name
from histoguard.slide import Rectangle, write_synthetic_slide

runner = CliRunner()
DEAD_PID = 999_999_999  # above any pid_max
SHARED = "s" * 200  # two slides share their first 200 characters
#: Stems of four slides: two 244-character ASCII file names (239 + ".tiff") that share their
#: first 200 characters, two of 120 two-byte characters (240 bytes).
STEMS = (
    SHARED + "A" * 38 + "1",
    SHARED + "A" * 38 + "2",
    "é" * 119 + "ä",
    "é" * 119 + "ö",
)
LABELS = ("a", "b", "a", "b")


def _utf8(name: str) -> int:
    return len(name.encode("utf-8"))


def test_bounded_stem_keeps_short_stems_and_hashes_long_ones() -> None:
    assert bounded_stem("S1") == "S1"
    exact = "x" * MAX_STEM_BYTES
    assert bounded_stem(exact) == exact
    long = "x" * (MAX_STEM_BYTES + 1)
    bounded = bounded_stem(long)
    digest = hashlib.sha256(long.encode()).hexdigest()[:12]
    assert bounded == "x" * (MAX_STEM_BYTES - 13) + "~" + digest
    assert _utf8(bounded) == MAX_STEM_BYTES
    assert bounded_stem(bounded) == bounded, "idempotent: a table may already hold it"
    assert bounded_stem(STEMS[0]) != bounded_stem(STEMS[1])
    assert bounded_stem(STEMS[0])[:100] == STEMS[0][:100], "readable prefix kept"


def test_bounded_stem_never_splits_a_multibyte_character() -> None:
    for stem in ("é" * 120, "a" + "é" * 120, "😀" * 60, "a" + "日本" * 40):
        bounded = bounded_stem(stem)
        assert _utf8(bounded) <= MAX_STEM_BYTES
        prefix = bounded.rpartition("~")[0]
        assert prefix and stem.startswith(prefix), (stem, bounded)
        assert bounded.encode().decode() == bounded  # valid UTF-8 throughout


def test_long_temporary_names_fit_and_parse_back_exactly(tmp_path: Path) -> None:
    dead = Owner(host_name(), DEAD_PID, 5)
    widest = Owner("h" * 63, 10**10 - 1, 10**20 - 1)  # longest host, PID and start time
    finals = [f"{bounded_stem(stem)}.attention.geojson" for stem in STEMS]
    finals += ["S1.h5", "x" * MAX_TEMP_FINAL_BYTES, "x" * (MAX_TEMP_FINAL_BYTES + 1)]
    for final in finals:
        name = temporary_name(final, widest)
        assert _utf8(name) <= MAX_NAME_BYTES, (final, _utf8(name))
        assert parse_temporary(name) == (temporary_final(final), widest)
    assert temporary_final("S1.h5") == "S1.h5"
    assert temporary_final(finals[0]) != temporary_final(finals[1])
    # Cleanup matches one slide's outputs exactly, even with hashed final names.
    made = {final: tmp_path / temporary_name(final, dead) for final in finals}
    for path in made.values():
        path.write_bytes(b"partial")
    assert remove_stale_temporaries(tmp_path, names={finals[0], "S1.h5"}) == 2
    assert not made[finals[0]].exists() and not made["S1.h5"].exists()
    assert all(made[f].exists() for f in finals if f not in (finals[0], "S1.h5"))


def test_lock_and_feature_names_are_bounded(tmp_path: Path) -> None:
    for stem in STEMS:
        lock = lock_path(tmp_path, stem)
        assert _utf8(lock.name + ".break") <= MAX_NAME_BYTES
        assert lock.name == f".{bounded_stem(stem)}.lock"
        path = feature_file(tmp_path, stem)
        assert path.name == f"{bounded_stem(stem)}.h5"
        assert recorded_stem(path, {"slide_stem": stem}) == stem
        assert recorded_stem(path, {"slide_stem": "another"}) == path.stem
    assert lock_path(tmp_path, "S1").name == ".S1.lock"


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("in")
    tissue = [Rectangle(x0=64, y0=64, x1=960, y1=704)]
    for i, stem in enumerate(STEMS):
        write_synthetic_slide(folder / f"{stem}.tiff", width=1024, height=768, mpp=0.5,
                              shapes=tissue, levels=2, seed=i)  # fmt: skip
    assert len(f"{STEMS[0]}.tiff") == 244 and _utf8(f"{STEMS[2]}.tiff") == 245
    return folder


def test_long_names_go_through_tile_extract_train_predict(slides: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    tiling = ["--mpp", "0.5", "--tile-size", "224", "--min-tissue", "0.5", "-q"]
    tile = runner.invoke(app, ["tile", str(slides), "--out", str(out / "tiles"), *tiling,
                               "--thumbnail-size", "64"])  # fmt: skip
    assert tile.exit_code == 0, tile.output
    extract = runner.invoke(app, [
        "extract", str(slides), "--encoder", "hg-handcrafted", "--readers", "0",
        "--tiles-dir", str(out / "tiles"), "--out", str(out / "features"), *tiling,
    ])  # fmt: skip
    assert extract.exit_code == 0, extract.output
    for stem in STEMS:
        bounded = bounded_stem(stem)
        assert bounded != stem
        tiles = out / "tiles" / f"{bounded}.h5"
        assert (out / "tiles" / f"{bounded}.tissue.geojson").is_file()
        features = feature_file(out / "features", stem)
        for path in (tiles, features):
            with h5py.File(path, "r") as h5:
                assert h5.attrs["slide_stem"] == stem, "the original stem is recorded"
                assert h5.attrs["slide_path"] == str((slides / f"{stem}.tiff").resolve())
    # Two names sharing their first 200 characters have distinct outputs.
    assert len(list((out / "features").glob("*.h5"))) == len(STEMS)

    table = tmp_path / "cohort.csv"
    pairs = enumerate(zip(STEMS, LABELS, strict=True))
    rows = [f"{stem},{label},p{i},c0" for i, (stem, label) in pairs]
    table.write_text("slide_id,label,patient_id,center\n" + "\n".join(rows) + "\n")
    model = out / "model"
    train = runner.invoke(app, ["train", "--cohort", str(table), "--features",
                                str(out / "features"), "--out", str(model), "--epochs", "2",
                                "--k", "2", "--n-boot", "5", "--calibration-fraction", "0",
                                "-q"])  # fmt: skip
    assert train.exit_code == 0, train.output
    # One ASCII and one two-byte name, with heatmaps (named by the bounded stem too).
    files = [str(feature_file(out / "features", stem)) for stem in STEMS[::2]]
    predict = runner.invoke(app, ["predict", *files, "--model", str(model), "--out",
                                  str(out / "predictions")])  # fmt: skip
    assert predict.exit_code == 0, predict.output
    with (out / "predictions" / "predictions.csv").open(newline="") as handle:
        named = {row["slide"] for row in csv.DictReader(handle)}
    assert named == set(STEMS[::2]), "predictions name slides by their original stem"
    assert len(list((out / "predictions").rglob("*.attention.png"))) == 2

    for path in out.rglob("*"):
        assert _utf8(path.name) <= MAX_STEM_BYTES + len(".attention.geojson") + 1, path.name
        assert ".tmp-" not in path.name and not path.name.endswith(".lock"), path
