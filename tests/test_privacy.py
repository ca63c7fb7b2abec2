"""``--anonymize``: no output of tile -> extract -> train -> predict (with heatmaps) -> report
names the slide, its patient or its label, only the salted id does; the mapping back stays with
the user."""

from __future__ import annotations

import csv
import os
import re
import stat
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from histoguard.cli import app
from histoguard.core._privacy import Anonymizer, anonymous_id, load_salt
from histoguard.errors import ConfigError
from histoguard.slide import TilingConfig
from histoguard.slide._synthetic import Rectangle, synthetic_tissue

STEM = "DOE_JOHN_MRN1234567"
#: Planted identifiers; "DOE" alone is checked in decoded text only (3 bytes occur by chance in
#: compressed binary data).
SECRETS = ("DOE_JOHN", "JOHN", "1234567", "DOE^")
DESCRIPTION = (
    "Aperio Image Library v12.0.15\r\n1024x768 [0,0 1024x768] (256x256) JPEG/RGB Q=70"
    f"|AppMag = 20|MPP = 0.5|Patient=DOE^JOHN|MRN=1234567|Filename = {STEM}|Date = 01/02/25"
)

runner = CliRunner()
_BASE64 = re.compile(r"data:[\w/+.-]+;base64,[A-Za-z0-9+/=]+")


#: More planted patients for the cohort: (last name, first name, record number); the slide of
#: each is ``LAST_FIRST_MRN<number>.tiff``.
PATIENTS = (
    ("DOE", "JOHN", "1234567"),
    ("ROE", "JANETTE", "Q82K17X"),
    ("POE", "EDGARDO", "Z39M44W"),
    ("LOE", "MARIELLA", "K55T02B"),
    ("MOE", "ANNABEL", "V71R68J"),
    ("KOE", "PAULINO", "H13C90N"),
)


def _secrets(patients: tuple[tuple[str, str, str], ...]) -> tuple[str, ...]:
    return tuple(
        s for last, first, mrn in patients for s in (f"{last}_{first}", first, mrn, f"{last}^")
    )


def _planted_slide(
    folder: Path, patient: tuple[str, str, str] = PATIENTS[0], seed: int = 1
) -> Path:
    """A 1024 x 768 px two-level TIFF at 0.5 µm/px whose name, ImageDescription and label page
    carry a patient's name and record number."""
    import tifffile

    last, first, mrn = patient
    stem = f"{last}_{first}_MRN{mrn}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}.tiff"
    description = DESCRIPTION.replace("DOE^JOHN", f"{last}^{first}").replace("1234567", mrn)
    description = description.replace(STEM, stem)
    image = synthetic_tissue(1024, 768, [Rectangle(x0=128, y0=128, x1=896, y1=640)], seed=seed)
    with tifffile.TiffWriter(path) as tif:
        for level, scale in enumerate((1, 2)):
            tif.write(
                image[::scale, ::scale],
                tile=(256, 256),
                photometric="rgb",
                compression="jpeg",
                resolution=(1e4 / (0.5 * scale), 1e4 / (0.5 * scale)),
                resolutionunit="CENTIMETER",
                subfiletype=1 if level else 0,
                description=description if level == 0 else None,
                metadata=None,
            )
        label = np.full((64, 128, 3), (200, 30, 200), np.uint8)
        tif.write(
            label, photometric="rgb", subfiletype=1, metadata=None,
            description=f"label 128x64\r\nPatient={last}^{first} MRN={mrn} {stem}",
        )  # fmt: skip
    return path


def _texts_of_hdf5(path: Path) -> list[str]:
    """Every attribute (name and value) and every string dataset in an HDF5 file, decoded."""
    texts: list[str] = []

    def visit(name: str, item: h5py.Group | h5py.Dataset) -> None:
        texts.append(name)
        texts.extend(f"{key}={value!r}" for key, value in item.attrs.items())
        if isinstance(item, h5py.Dataset) and item.dtype.kind in "OSU":
            texts.extend(repr(value) for value in item[()].tolist())

    with h5py.File(path, "r") as h5:
        texts.extend(f"{key}={value!r}" for key, value in h5.attrs.items())
        h5.visititems(visit)
    return texts


def _leaks(
    root: Path, slide: Path | list[Path], texts: list[str], secrets: tuple[str, ...] = SECRETS
) -> list[str]:
    """Where a planted identifier, the stem or the slide's path shows: file names, raw bytes,
    decoded HDF5 contents and text files, and ``texts`` (the commands' output). Last names
    (3 letters) are looked for in decoded text only."""
    found = []
    slides = slide if isinstance(slide, list) else [slide]
    paths = [str(p) for s in slides for p in (s, s.resolve())]
    raw_needles = [s.encode() for s in (*secrets, *paths)]
    last_names = {s[:-1] for s in secrets if s.endswith("^")}
    text_needles = (*secrets, *last_names, *(s.stem for s in slides), *paths)
    for path in sorted(p for p in root.rglob("*")):
        if any(needle in str(path.relative_to(root)) for needle in text_needles):
            found.append(f"name {path}")
        if not path.is_file():
            continue
        data = path.read_bytes()
        found += [f"{path}: bytes {n!r}" for n in raw_needles if n in data]
        decoded = _texts_of_hdf5(path) if path.suffix == ".h5" else []
        if path.suffix in {".csv", ".json", ".geojson", ".html", ".txt", ".md", ".log"}:
            # Embedded images are base64, where 3 capitals occur by chance: their bytes are
            # searched above with the longer needles.
            decoded.append(_BASE64.sub("", data.decode("utf-8")))
        found += [f"{path}: text {n!r}" for n in text_needles for t in decoded if n in t]
    found += [f"output {n!r}" for n in text_needles for t in texts if n in t]
    return found


def test_without_anonymize_the_same_check_finds_the_slide(tmp_path: Path) -> None:
    """The leak check can fail: a plain run names the slide everywhere."""
    slide = _planted_slide(tmp_path / "in")
    result = runner.invoke(app, ["tile", str(slide), "--out", str(tmp_path / "out"), "-q"])
    assert result.exit_code == 0, result.output
    leaks = _leaks(tmp_path / "out", slide, [result.output])
    assert any(leak.startswith("name ") for leak in leaks)
    assert any(".h5: text 'DOE_JOHN'" in leak for leak in leaks)


def test_ids_are_keyed_by_the_salt_and_stable_across_folders(tmp_path: Path) -> None:
    salt = load_salt(tmp_path / "salt")
    assert len(salt) == 32 and stat.S_IMODE((tmp_path / "salt").stat().st_mode) == 0o600
    assert load_salt(tmp_path / "salt") == salt  # read, not remade
    first = anonymous_id(STEM, salt)
    assert first.startswith("anon-") and len(first) == 21
    assert first != anonymous_id(STEM, b"another salt of 16+ bytes")
    anonymizer = Anonymizer.load(tmp_path / "salt")
    assert anonymizer.map_path == tmp_path / "salt.map.csv"
    assert anonymizer.id_for(Path("/a") / f"{STEM}.svs") == anonymizer.id_for(f"/b/{STEM}.tif")
    assert "salt=" not in repr(anonymizer) and str(salt) not in repr(anonymizer)  # never shown
    assert anonymizer.scrub(f"/x/{STEM}.tiff: bad tile in {STEM}", f"/x/{STEM}.tiff") == (
        f"{first}: bad tile in {first}"
    )


def test_salt_and_mapping_come_from_the_environment_and_stay_out_of_the_outputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HISTOGUARD_ANON_SALT_FILE", str(tmp_path / "keys" / "hospital.salt"))
    config = TilingConfig(anonymize=True)
    assert config.anonymize_salt == tmp_path / "keys" / "hospital.salt"
    assert config.anonymize_map == tmp_path / "keys" / "hospital.map.csv"
    assert "anonymize_salt" not in config.public_dict()
    assert config.result_key() == TilingConfig().result_key()  # names only: compared apart
    inside = TilingConfig(anonymize=True, anonymize_salt=tmp_path / "out" / "salt")
    anonymizer = inside.anonymizer()
    assert anonymizer is not None
    with pytest.raises(ConfigError, match="inside the output folder"):
        anonymizer.check_outside(tmp_path / "out")
    with pytest.raises(ConfigError, match="need anonymize"):
        TilingConfig(anonymize_map=tmp_path / "map.csv")
    (tmp_path / "short").write_bytes(b"1234")
    with pytest.raises(ConfigError, match="at least 16"):
        load_salt(tmp_path / "short")


def test_anonymize_default_comes_from_the_environment(tmp_path: Path) -> None:
    slide = _planted_slide(tmp_path / "in")
    env = {"HISTOGUARD_ANONYMIZE": "1", "HISTOGUARD_ANON_SALT_FILE": str(tmp_path / "salt")}
    result = runner.invoke(app, ["tile", str(slide), "--out", str(tmp_path / "out"), "-q"], env=env)
    assert result.exit_code == 0, result.output
    anon = anonymous_id(STEM, (tmp_path / "salt").read_bytes())
    assert (tmp_path / "out" / f"{anon}.h5").is_file()
    assert STEM in (tmp_path / "salt.map.csv").read_text()
    again = runner.invoke(app, ["tile", str(slide), "--out", str(tmp_path / "out"), "-q"], env=env)
    assert "0 done, 1 skipped" in again.output  # resumes by the id
    assert os.environ.get("HISTOGUARD_ANONYMIZE") is None  # the runner restored it


def test_a_failing_slide_is_reported_by_its_id_only(tmp_path: Path) -> None:
    bad = tmp_path / "in" / f"{STEM}.svs"
    bad.parent.mkdir()
    bad.write_text("not a slide")
    salt = ["--anonymize-salt", str(tmp_path / "salt")]
    result = runner.invoke(app, ["-v", "tile", str(bad), "--out", str(tmp_path / "out"), "-q",
                                 "--anonymize", *salt])  # fmt: skip
    assert result.exit_code == 1
    anon = anonymous_id(STEM, (tmp_path / "salt").read_bytes())
    summary = (tmp_path / "out" / "tiling_summary.csv").read_text()
    assert f"{anon},failed" in summary and "the content is not" in summary  # the reason stays
    assert _leaks(tmp_path / "out", bad, [result.output]) == []


def _run(args: list[str], outputs: list[str]) -> str:
    result = runner.invoke(app, ["-v", *args])
    outputs.append(result.output)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.slow
@pytest.mark.integration
def test_the_whole_pipeline_with_anonymize_names_no_patient(tmp_path: Path) -> None:
    """tile -> extract -> anonymize-table -> train -> predict --slide (heatmaps) -> report on six
    planted slides of two classes: every output names them by their anon ids only."""
    slides = [_planted_slide(tmp_path / "in", p, seed=i) for i, p in enumerate(PATIENTS)]
    assert b"DOE^JOHN" in slides[0].read_bytes()  # the planted identifiers are there to find
    labels = ["benign", "tumour"] * 3
    cohort = tmp_path / "in" / "cohort.csv"  # what the hospital has: stems, MRNs, labels
    given = zip(slides, PATIENTS, labels, strict=True)
    cohort.write_text("slide_id,patient_id,label\n" + "".join(
        f"{s.stem},{mrn},{label}\n" for s, (_, _, mrn), label in given
    ))  # fmt: skip
    secrets, out = tmp_path / "secrets", tmp_path / "out"
    salt = ["--anonymize-salt", str(secrets / "salt")]
    private = ["--anonymize", *salt, "--anonymize-map", str(secrets / "map.csv")]
    tiling = ["--mpp", "0.5", "--tile-size", "224", "--min-tissue", "0.5", "-q"]
    outputs: list[str] = []
    _run(["tile", str(tmp_path / "in"), "--out", str(out / "tiles"), *tiling, *private], outputs)
    _run(["extract", str(tmp_path / "in"), "--encoder", "hg-handcrafted", "--readers", "0",
          "--tiles-dir", str(out / "tiles"), "--out", str(out / "features"), *tiling, *private],
         outputs)  # fmt: skip
    _run(["anonymize-table", str(cohort), *salt, "--out", str(out / "cohort.csv")], outputs)
    key = (secrets / "salt").read_bytes()
    ids = [anonymous_id(s.stem, key) for s in slides]
    assert {p.name for p in (out / "tiles").iterdir()} >= {
        f"{ids[0]}.h5", f"{ids[0]}.thumbnail.png", f"{ids[0]}.tissue.geojson",
    }  # fmt: skip
    with h5py.File(out / "features" / f"{ids[0]}.h5", "r") as h5:
        assert h5.attrs["slide_stem"] == ids[0] and h5.attrs["slide_path"] == ""
    with (out / "cohort.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["slide_id"] for r in rows] == ids and [r["label"] for r in rows] == labels
    assert rows[0]["patient_id"] == anonymous_id(PATIENTS[0][2], key)
    _run(["train", "--cohort", str(out / "cohort.csv"), "--features", str(out / "features"),
          "--out", str(out / "run"), "--model", "abmil", "--split", "kfold", "--k", "2",
          "--epochs", "2", "--patience", "1", "--seed", "0", "--n-boot", "20",
          "--calibration-fraction", "0.34", "-q"], outputs)  # fmt: skip
    features = sorted((out / "features").glob("anon-*.h5"))
    assert sorted(f.stem for f in features) == sorted(ids)
    _run(["predict", *map(str, features), "--model", str(out / "run"), "--out",
          str(out / "predictions"), *[a for s in slides for a in ("--slide", str(s))], *salt],
         outputs)  # fmt: skip
    drawn = {p.name for p in (out / "predictions").iterdir()}
    assert {f"{ids[0]}.attention.png", f"{ids[0]}.attention.geojson"} <= drawn  # overlays drawn
    assert (out / "predictions" / "predictions.csv").read_text().count(ids[0]) == 1
    _run(["report", str(out / "run"), "--out", str(out / "report")], outputs)
    assert (out / "report" / "report.html").is_file()

    assert _leaks(out, slides, outputs, _secrets(PATIENTS)) == []
    assert _leaks(out, slides, [cohort.read_text()], _secrets(PATIENTS))  # the check can fail
    # The way back is with the user, outside the outputs, readable by them only.
    for secret in (secrets / "salt", secrets / "map.csv"):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    with (secrets / "map.csv").open() as f:
        assert sorted(map(dict, csv.DictReader(f)), key=lambda r: r["slide_stem"]) == sorted(
            ({"anon_id": i, "slide_stem": s.stem, "slide_path": str(s.resolve())}
             for i, s in zip(ids, slides, strict=True)), key=lambda r: r["slide_stem"],
        )  # fmt: skip


def test_anonymize_table_translates_slide_and_patient_ids(tmp_path: Path) -> None:
    key = load_salt(tmp_path / "salt")
    done = anonymous_id("s2", key)
    table = tmp_path / "cohort.tsv"
    table.write_text(f"slide_id\tpatient_id\tlabel\tcenter\n{STEM}\tMRN1234567\ttumour\tA\n"
                     f"{done}\t\tbenign\tB\n")  # fmt: skip
    salt = ["--salt", str(tmp_path / "salt")]
    result = runner.invoke(
        app, ["anonymize-table", str(table), *salt, "-o", str(tmp_path / "x.tsv")]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "x.tsv").read_text().splitlines() == [
        "slide_id\tpatient_id\tlabel\tcenter",
        f"{anonymous_id(STEM, key)}\t{anonymous_id('MRN1234567', key)}\ttumour\tA",
        f"{done}\t\tbenign\tB",  # an id stays an id; an empty cell stays empty
    ]
    only = ["--column", "slide_id", "-o", str(tmp_path / "y.tsv")]
    assert runner.invoke(app, ["anonymize-table", str(table), *salt, *only]).exit_code == 0
    assert "MRN1234567" in (tmp_path / "y.tsv").read_text()  # only what was asked
    for bad, why in (
        ([*salt, "-o", str(table)], "overwrite the original"),
        ([*salt, "--column", "mrn", "-o", str(tmp_path / "z.tsv")], "no column mrn"),
        (["--salt", str(tmp_path / "absent"), "-o", str(tmp_path / "z.tsv")], "no such"),
    ):
        result = runner.invoke(app, ["anonymize-table", str(table), *bad])
        assert result.exit_code == 2 and why in " ".join(result.output.split()), result.output
    assert not (tmp_path / "absent").exists()  # never made: a new salt would match nothing


def test_a_heatmap_warning_names_an_anonymised_slide_by_its_id(tmp_path: Path) -> None:
    from histoguard.mil._prediction import SlidePrediction
    from histoguard.report import write_prediction_heatmaps

    anon = anonymous_id(STEM, b"a salt of sixteen bytes")
    gone = tmp_path / "moved" / f"{STEM}.tiff"
    fields: dict[str, object] = {
        "slide": anon, "probabilities": {"a": 0.4, "b": 0.6}, "predicted": "b",
        "attention": np.ones(2), "coords": np.array([[0, 0], [256, 0]]), "tile_size0": 256.0,
        "slide_path": gone,
    }  # fmt: skip
    plain = write_prediction_heatmaps([SlidePrediction(**fields)], tmp_path / "a")  # type: ignore[arg-type]
    assert STEM in " ".join(plain.warnings)  # without anonymisation the path is the help
    drawn = write_prediction_heatmaps(
        [SlidePrediction(**fields, anonymized=True)],
        tmp_path / "b",  # type: ignore[arg-type]
    )
    assert drawn.warnings and anon in drawn.warnings[0]
    unmatched = write_prediction_heatmaps(
        [SlidePrediction(**{**fields, "slide_path": None}, anonymized=True)],
        tmp_path / "c",  # type: ignore[arg-type]
    )
    assert "--anonymize-salt" in unmatched.warnings[0]  # how to have it drawn
    assert STEM not in " ".join(drawn.warnings) and str(tmp_path) not in drawn.warnings[0]


@pytest.mark.slow
@pytest.mark.integration
def test_extract_on_dask_with_anonymize_names_no_patient(tmp_path: Path) -> None:
    """The Dask path, in a process of its own so that the workers' stderr is searched too."""
    pytest.importorskip("distributed")
    import subprocess
    import sys

    slide = _planted_slide(tmp_path / "in")
    bad = tmp_path / "in" / "ROE_JANETTE_MRNQ82K17X.svs"
    bad.write_text("not a slide")
    out, salt = tmp_path / "out", tmp_path / "secrets" / "salt"
    done = subprocess.run(
        [sys.executable, "-m", "histoguard", "-v", "extract", str(tmp_path / "in"), "--out",
         str(out), "--encoder", "hg-handcrafted", "--workers", "1", "--mpp", "0.5",
         "--tile-size", "224", "-q", "--anonymize", "--anonymize-salt", str(salt)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "NO_COLOR": "1"},
    )  # fmt: skip
    assert done.returncode == 1, done.stderr  # the bad slide fails, alone
    key = salt.read_bytes()
    assert (out / f"{anonymous_id(STEM, key)}.h5").is_file()
    summary = (out / "extraction_summary.csv").read_text()
    assert f"{anonymous_id(bad.stem, key)},failed" in summary
    texts = [done.stdout, done.stderr]
    assert _leaks(out, [slide, bad], texts, _secrets(PATIENTS[:2])) == []
