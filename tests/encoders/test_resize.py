"""The encoder owns its resize: preprocess and the differentiable attack path share it, non-square
tiles are centre-cropped (not stretched) by default, and the policy travels with exports."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from histoguard.cli import app
from histoguard.encoders import Encoder, ResizePolicy, load_encoder
from histoguard.encoders._export import info_from_metadata, info_to_json
from histoguard.errors import ImageError


def _wide_tiles(seed: int = 0) -> np.ndarray:
    """(2, 240, 320, 3) uint8 noise: non-square, not at the 224 px input size."""
    return np.random.default_rng(seed).integers(0, 256, (2, 240, 320, 3), dtype=np.uint8)


def test_non_square_tiles_are_centre_cropped_not_stretched() -> None:
    encoder = load_encoder("hg-cnn")
    assert encoder.info.resize == ResizePolicy()
    tiles = _wide_tiles()
    square = np.ascontiguousarray(tiles[:, :, 40:280])  # the centred 240 x 240
    torch.testing.assert_close(
        encoder.preprocess(tiles), encoder.preprocess(square), rtol=0, atol=0
    )
    stretch = dataclasses.replace(encoder.info, resize=ResizePolicy(aspect="stretch"))
    stretched = Encoder(stretch, encoder.module).preprocess(tiles)
    assert not torch.equal(stretched, encoder.preprocess(tiles))


def test_refusing_encoder_raises_a_typed_error_for_non_square_tiles() -> None:
    encoder = load_encoder("hg-cnn")
    info = dataclasses.replace(encoder.info, resize=ResizePolicy(aspect="refuse"))
    refusing = Encoder(info, encoder.module)
    with pytest.raises(ImageError, match="320x240 px, not square"):
        refusing.encode(_wide_tiles())
    assert refusing.encode(_wide_tiles()[:, :, :240]).shape == (2, 256)


def test_attack_pipeline_resizes_exactly_like_preprocess() -> None:
    from histoguard.robustness.attacks._pgd import PixelEncoder

    encoder = load_encoder("hg-cnn")
    tiles = _wide_tiles(seed=1)
    pixels = torch.from_numpy(tiles).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        differentiable = PixelEncoder(encoder)(pixels)
    np.testing.assert_allclose(differentiable.numpy(), encoder.encode(tiles), rtol=0, atol=1e-6)


def test_policy_is_in_the_metadata_and_survives_export() -> None:
    info = dataclasses.replace(
        load_encoder("hg-cnn").info, resize=ResizePolicy(interpolation="bicubic", aspect="refuse")
    )
    assert info.to_dict()["resize"] == {
        "interpolation": "bicubic",
        "antialias": True,
        "aspect": "refuse",
    }
    rebuilt = info_from_metadata(
        Path("model.onnx"), info_to_json(info), factory=info.factory, default_name="x"
    )
    assert rebuilt.resize == info.resize
    # Exports made before the policy existed get the default.
    legacy = {k: v for k, v in json.loads(info_to_json(info)).items() if k != "resize"}
    old = info_from_metadata(
        Path("old.onnx"), json.dumps(legacy), factory=info.factory, default_name="x"
    )
    assert old.resize == ResizePolicy()


def test_encoders_command_states_the_resize() -> None:
    runner = CliRunner()
    listed = runner.invoke(app, ["encoders", "--json"])
    assert listed.exit_code == 0, listed.output
    entries = {entry["name"]: entry for entry in json.loads(listed.output)}
    assert entries["hg-cnn"]["resize"]["aspect"] == "center-crop"
    table = runner.invoke(app, ["encoders"], env={"COLUMNS": "300"})
    assert table.exit_code == 0, table.output
    assert "resize" in table.output and "center-crop" in table.output
