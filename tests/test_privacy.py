"""``--anonymize``: no output of tile -> extract -> predict names the slide, its patient or its
label, only the salted id does; the mapping back stays with the user."""

from __future__ import annotations

import csv
import os
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


def _planted_slide(folder: Path) -> Path:
    """A 1024 x 768 px two-level TIFF at 0.5 µm/px whose name, ImageDescription and label page
    carry a patient's name and record number."""
    import tifffile

    folder.mkdir(parents=True)
    path = folder / f"{STEM}.tiff"
    image = synthetic_tissue(1024, 768, [Rectangle(x0=128, y0=128, x1=896, y1=640)], seed=1)
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
                description=DESCRIPTION if level == 0 else None,
                metadata=None,
            )
        label = np.full((64, 128, 3), (200, 30, 200), np.uint8)
        tif.write(
            label, photometric="rgb", subfiletype=1, metadata=None,
            description=f"label 128x64\r\nPatient=DOE^JOHN MRN=1234567 {STEM}",
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


def _leaks(root: Path, slide: Path, texts: list[str]) -> list[str]:
    """Where a planted identifier, the stem or the slide's path shows: file names, raw bytes,
    decoded HDF5 contents and text files, and ``texts`` (the commands' output)."""
    found = []
    raw_needles = [s.encode() for s in (*SECRETS, str(slide), str(slide.resolve()))]
    text_needles = (*SECRETS, "DOE", STEM, str(slide.resolve()))
    for path in sorted(p for p in root.rglob("*")):
        if any(needle in str(path.relative_to(root)) for needle in text_needles):
            found.append(f"name {path}")
        if not path.is_file():
            continue
        data = path.read_bytes()
        found += [f"{path}: bytes {n!r}" for n in raw_needles if n in data]
        decoded = _texts_of_hdf5(path) if path.suffix == ".h5" else []
        if path.suffix in {".csv", ".json", ".geojson", ".html", ".txt", ".md", ".log"}:
            decoded.append(data.decode("utf-8"))
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
