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


def _untrained_model(folder: Path, in_dim: int) -> Path:
    import torch

    from histoguard.mil import build_model, save_model

    torch.manual_seed(0)
    save_model(
        build_model("abmil", in_dim=in_dim, n_classes=2), folder, labels=["benign", "tumour"]
    )
    return folder


def test_a_full_run_with_anonymize_names_no_patient(tmp_path: Path) -> None:
    slide = _planted_slide(tmp_path / "in")
    assert b"DOE^JOHN" in slide.read_bytes()  # the planted identifiers are there to find
    secrets = tmp_path / "secrets"
    out = tmp_path / "out"
    private = ["--anonymize", "--anonymize-salt", str(secrets / "salt")]
    private += ["--anonymize-map", str(secrets / "map.csv")]
    tiling = ["--mpp", "0.5", "--tile-size", "224", "--min-tissue", "0.5", "-q"]
    outputs = []
    tile = runner.invoke(app, ["-v", "tile", str(slide), "--out", str(out / "tiles"), *tiling,
                               *private])  # fmt: skip
    assert tile.exit_code == 0, tile.output
    extract = runner.invoke(app, [
        "-v", "extract", str(slide.parent), "--encoder", "hg-handcrafted", "--readers", "0",
        "--tiles-dir", str(out / "tiles"), "--out", str(out / "features"), *tiling, *private,
    ])  # fmt: skip
    assert extract.exit_code == 0, extract.output
    outputs += [tile.output, extract.output]

    anon = anonymous_id(STEM, (secrets / "salt").read_bytes())
    assert {p.name for p in (out / "tiles").iterdir()} >= {
        f"{anon}.h5", f"{anon}.thumbnail.png", f"{anon}.tissue.geojson",
    }  # fmt: skip
    features = out / "features" / f"{anon}.h5"
    with h5py.File(features, "r") as h5:
        in_dim = int(h5["features"].shape[1])
        assert h5.attrs["slide_stem"] == anon and h5.attrs["slide_path"] == ""
    model = _untrained_model(tmp_path / "model", in_dim)
    predict = runner.invoke(app, ["-v", "predict", str(features), "--model", str(model),
                                  "--out", str(out / "predictions"), "--force"])  # fmt: skip
    assert predict.exit_code == 0, predict.output
    outputs.append(predict.output)
    assert (out / "predictions" / "predictions.csv").read_text().count(anon) == 1

    assert _leaks(out, slide, outputs) == []
    # The way back is with the user, outside the outputs, readable by them only.
    for secret in (secrets / "salt", secrets / "map.csv"):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    with (secrets / "map.csv").open() as f:
        assert list(csv.DictReader(f)) == [
            {"anon_id": anon, "slide_stem": STEM, "slide_path": str(slide.resolve())}
        ]


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
    import time; t=time.perf_counter()
    result = runner.invoke(app, ["-v", *args])
    print(args[0], time.perf_counter()-t)
    outputs.append(result.output)
    assert result.exit_code == 0, result.output
    return result.output


def test_the_whole_pipeline_with_anonymize_names_no_patient(tmp_path: Path) -> None:
    """tile -> extract -> anonymize-table -> train -> predict --slide (heatmaps) -> report on six
    planted slides of two classes: every output names them by their anon ids only."""
    slides = [_planted_slide(tmp_path / "in", p, seed=i) for i, p in enumerate(PATIENTS)]
    labels = ["benign", "tumour"] * 3
    cohort = tmp_path / "in" / "cohort.csv"  # what the hospital has: stems, MRNs, labels
    cohort.write_text("slide_id,patient_id,label\n" + "".join(
        f"{s.stem},{mrn},{label}\n" for s, (_, _, mrn), label in zip(slides, PATIENTS, labels)
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
    _run(["report", str(out / "run"), "--out", str(out / "report")], outputs)
    assert (out / "report" / "report.html").is_file()

    assert _leaks(out, slides, outputs, _secrets(PATIENTS)) == []
    assert _leaks(out, slides, [cohort.read_text()], _secrets(PATIENTS))  # the check can fail
