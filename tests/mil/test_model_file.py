"""Malformed saved-model folders: refused with a message naming the file, before any allocation
sized by ``model.json``, and never through a traceback."""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from histoguard.cli import app
from histoguard.errors import ModelFileError
from histoguard.features import write_feature_file
from histoguard.mil import build_model, load_model, save_model
from histoguard.mil._model_file import MAX_SETTING

Damage = Callable[[Path], None]


def _edit_json(change: Callable[[dict], object]) -> Damage:
    def damage(folder: Path) -> None:
        description = json.loads((folder / "model.json").read_text())
        changed = change(description)
        (folder / "model.json").write_text(json.dumps(description if changed is None else changed))

    return damage


def _set(key: str, value: object) -> Damage:
    return _edit_json(lambda d: d["model"].__setitem__(key, value))


def _edit_weights(change: Callable[[dict[str, torch.Tensor]], None]) -> Damage:
    def damage(folder: Path) -> None:
        state = load_file(str(folder / "model.safetensors"))
        change(state)
        save_file(state, str(folder / "model.safetensors"))

    return damage


def _poison(value: float) -> Callable[[dict[str, torch.Tensor]], None]:
    def change(state: dict[str, torch.Tensor]) -> None:
        name = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)
        state[name] = state[name].clone()
        state[name].view(-1)[0] = value

    return change


def _write(name: str, data: bytes) -> Damage:
    return lambda folder: (folder / name).write_bytes(data)


DAMAGES: dict[str, Damage] = {
    "no model.json": lambda folder: (folder / "model.json").unlink(),
    "no weights": lambda folder: (folder / "model.safetensors").unlink(),
    "empty model.json": _write("model.json", b""),
    "model.json not JSON": _write("model.json", b"{model: abmil"),
    "model.json not UTF-8": _write("model.json", b"\xff\xfe{}"),
    "model.json a list": _edit_json(lambda d: [d]),
    "model.json too large": _write("model.json", b" " * (2 << 20) + b"{}"),
    "no model object": _edit_json(lambda d: d.pop("model")),
    "unknown model": _set("name", "nosuch"),
    "in_dim zero": _set("in_dim", 0),
    "in_dim a string": _set("in_dim", "8"),
    "in_dim true": _set("in_dim", True),
    "hidden_dim 1e9": _set("hidden_dim", 10**9),
    "hidden_dim 3e6": _set("hidden_dim", 3 * 10**6),
    "hidden_dim negative": _set("hidden_dim", -4),
    "hidden_dim off by one": _set("hidden_dim", 17),
    "dropout NaN": _set("dropout", math.nan),
    "setting of no model": _set("bogus", 3),
    "labels missing": _edit_json(lambda d: d.pop("labels")),
    "labels wrong count": _edit_json(lambda d: d.__setitem__("labels", ["a"])),
    "weights NaN": _edit_weights(_poison(math.nan)),
    "weights inf": _edit_weights(_poison(math.inf)),
    "weights extra tensor": _edit_weights(lambda s: s.__setitem__("extra", torch.zeros(2))),
    "weights missing tensor": _edit_weights(lambda s: s.pop(next(iter(s)))),
    "weights truncated": lambda folder: (folder / "model.safetensors").write_bytes(
        (folder / "model.safetensors").read_bytes()[:-9]
    ),
    "weights header lies": _write("model.safetensors", struct.pack("<Q", 10**12) + b"{}"),
    "weights a pickle": _write("model.safetensors", b"\x80\x04K\x01."),
}


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    torch.manual_seed(0)
    model = build_model("abmil", in_dim=8, n_classes=2, hidden_dim=16)
    save_model(model, folder, labels=["benign", "tumour"])
    return folder


def test_an_intact_folder_loads(saved: Path) -> None:
    model, labels = load_model(saved)
    assert labels == ["benign", "tumour"] and model.in_dim == 8


def test_there_are_enough_damage_classes() -> None:
    assert len(DAMAGES) >= 23


@pytest.mark.parametrize("case", sorted(DAMAGES))
def test_a_damaged_folder_is_refused_naming_the_file(saved: Path, case: str) -> None:
    DAMAGES[case](saved)
    with pytest.raises(ModelFileError) as caught:
        load_model(saved)
    assert str(saved) in str(caught.value)
    assert "histoguard train" in str(caught.value)


def test_a_wide_setting_is_refused_before_any_allocation(saved: Path) -> None:
    _set("hidden_dim", MAX_SETTING + 1)(saved)
    with pytest.raises(ModelFileError, match="outside"):
        load_model(saved)


@pytest.mark.parametrize("case", ["hidden_dim 1e9", "weights NaN", "no model.json"])
def test_predict_reports_a_damaged_model_without_a_traceback(
    saved: Path, tmp_path: Path, case: str
) -> None:
    features = tmp_path / "s1.h5"
    rng = np.random.default_rng(0)
    write_feature_file(
        features,
        rng.normal(size=(5, 8)).astype(np.float32),
        np.arange(10, dtype=np.int64).reshape(5, 2),
        {"encoder": "x"},
    )
    DAMAGES[case](saved)
    result = CliRunner().invoke(
        app, ["predict", str(features), "--model", str(saved), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert str(saved) in result.output and "train" in result.output


def test_predict_never_labels_a_non_finite_output(saved: Path, tmp_path: Path) -> None:
    # Finite weights that overflow float32 on finite features: the slide fails, unlabelled.
    state = load_file(str(saved / "model.safetensors"))
    save_file({k: v * 1e30 if v.is_floating_point() else v for k, v in state.items()},
              str(saved / "model.safetensors"))  # fmt: skip
    rng = np.random.default_rng(0)
    for name in ("s1", "s2"):
        write_feature_file(
            tmp_path / f"{name}.h5",
            rng.normal(size=(5, 8)).astype(np.float32) * 1e6,
            np.arange(10, dtype=np.int64).reshape(5, 2),
            {"encoder": "x"},
        )
    out = tmp_path / "o"
    result = CliRunner().invoke(
        app, ["predict", str(tmp_path / "s1.h5"), str(tmp_path / "s2.h5"),
              "--model", str(saved), "--out", str(out), "--no-heatmaps"],
    )  # fmt: skip
    assert "Traceback" not in result.output
    assert "NaN or infinite" in result.output
    rows = (out / "predictions.csv").read_text().splitlines()[1:]
    assert [row.split(",")[1] for row in rows] == ["failed", "failed"]
