"""``histoguard train-encoder`` on class folders: trains, writes weights that ``extract``'s
loader takes, resumes, and turns mistakes into one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from histoguard.cli import app
from histoguard.encoders import load_encoder


def _class_folders(root: Path) -> Path:
    """root/<center>/<class>/<slide>_<i>.png, 32 px: flat vs grainy tiles, two centers."""
    rng = np.random.default_rng(0)
    for center, tint in (("A", (1.0, 0.7, 0.9)), ("B", (0.8, 0.8, 1.0))):
        for cls in ("flat", "grain"):
            folder = root / center / cls
            folder.mkdir(parents=True)
            for slide in range(3):
                for i in range(3):
                    base = rng.random((32, 32)) if cls == "grain" else np.full((32, 32), 0.5)
                    rgb = (60 + 150 * base[..., None] * np.array(tint)).astype(np.uint8)
                    Image.fromarray(rgb).save(folder / f"{center}{cls}{slide}_{i}.png")
    return root


def test_train_encoder_command_writes_loadable_weights_and_resumes(tmp_path: Path) -> None:
    tiles = _class_folders(tmp_path / "tiles")
    out = tmp_path / "out"
    args = ["train-encoder", str(tiles), "--encoder", "hg-cnn", "--out", str(out),
            "--epochs", "2", "--batch-size", "8", "--tile-size", "32", "--val-fraction", "0.34",
            "--slide-pattern", r"^(\w+?\d)_", "--augment", "blur:1", "-q"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "encoder:" in result.output
    record = json.loads((out / "encoder.json").read_text())
    assert record["centers"] == ["A", "B"] and record["classes"] == ["flat", "grain"]
    assert record["data"]["n_slides"] == 12
    load_encoder("hg-cnn", weights=out / "encoder.safetensors")
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 2 and "--resume" in again.output
    more = [*args[:7], "3", *args[8:], "--resume"]
    resumed = CliRunner().invoke(app, more)
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((out / "encoder.json").read_text())["epochs_run"] == 3


def test_train_encoder_mistakes_are_one_line_errors(tmp_path: Path) -> None:
    missing = CliRunner().invoke(
        app, ["train-encoder", str(tmp_path / "nope"), "--encoder", "hg-d4", "--out", "o"]
    )
    assert missing.exit_code == 2 and "error:" in missing.output and "nope" in missing.output
    tiles = _class_folders(tmp_path / "tiles")
    bad = CliRunner().invoke(
        app, ["train-encoder", str(tiles), "--encoder", "hg-d4", "--out", str(tmp_path / "o"),
              "--augment", "wobble"],
    )  # fmt: skip
    assert bad.exit_code == 2 and "wobble" in bad.output
    assert "Traceback" not in bad.output


def test_simclr_pretraining_then_a_supervised_run_from_its_weights(tmp_path: Path) -> None:
    tiles = _class_folders(tmp_path / "tiles")
    pre = tmp_path / "pre"
    common = ["--epochs", "1", "--batch-size", "8", "--tile-size", "32", "-q",
              "--slide-pattern", r"^(\w+?\d)_"]  # fmt: skip
    # Every image below the folder, class folders or not; labels are not read.
    result = CliRunner().invoke(
        app, ["train-encoder", str(tiles / "A"), "--encoder", "hg-cnn", "--out", str(pre),
              "--objective", "simclr", *common],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "validation loss" in result.output
    record = json.loads((pre / "encoder.json").read_text())
    assert record["config"]["objective"] == "simclr" and record["data"]["n_tiles"] == 18
    fine = CliRunner().invoke(
        app, ["train-encoder", str(tiles), "--encoder", "hg-cnn", "--out", str(tmp_path / "ft"),
              "--weights", str(pre / "encoder.safetensors"), *common],
    )  # fmt: skip
    assert fine.exit_code == 0, fine.output
    assert "balanced accuracy" in fine.output
    bad = CliRunner().invoke(
        app, ["train-encoder", str(tiles), "--encoder", "hg-cnn", "--out", str(tmp_path / "x"),
              "--objective", "byol"],
    )  # fmt: skip
    assert bad.exit_code == 2 and "byol" in bad.output
