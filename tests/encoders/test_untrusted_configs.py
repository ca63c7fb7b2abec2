"""An untrusted config.json or weights file cannot make an encoder allocate or build without
bound, and non-finite weights are refused at load."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch

from histoguard.encoders import load_encoder
from histoguard.errors import WeightsError


@pytest.fixture
def vit_dir(tmp_path: Path) -> Path:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        image_size=224, patch_size=32,
    )  # fmt: skip
    directory = tmp_path / "vit"
    transformers.ViTModel(config).save_pretrained(directory, safe_serialization=True)
    return directory


def _edit_config(directory: Path, **values: object) -> None:
    path = directory / "config.json"
    config = json.loads(path.read_text())
    config.update(values)
    path.write_text(json.dumps(config))


def test_the_intact_directory_loads(vit_dir: Path) -> None:
    assert load_encoder("hf-auto", weights=vit_dir).embed_dim == 32


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"num_hidden_layers": 10**6}, "num_hidden_layers"),
        ({"intermediate_size": 10**9}, "parameters"),
        ({"hidden_size": 3 * 10**6, "num_attention_heads": 1}, "parameters"),
    ],
)
def test_a_config_larger_than_its_weights_is_refused_fast(
    vit_dir: Path, values: dict[str, object], message: str
) -> None:
    _edit_config(vit_dir, **values)
    started = time.perf_counter()
    with pytest.raises(WeightsError, match=message):
        load_encoder("hf-auto", weights=vit_dir)
    assert time.perf_counter() - started < 30


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_encoder_weights_are_refused(vit_dir: Path, value: float) -> None:
    from safetensors.torch import load_file, save_file

    path = vit_dir / "model.safetensors"
    state = load_file(str(path))
    name = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)
    state[name].view(-1)[0] = value
    save_file(state, str(path), metadata={"format": "pt"})
    with pytest.raises(WeightsError, match="NaN or infinite"):
        load_encoder("hf-auto", weights=vit_dir)
