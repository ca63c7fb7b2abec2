"""Adapters: transformers directories, ONNX and TorchScript exports, timm presets.

Every model here is tiny and randomly initialised; nothing is downloaded.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from histoguard.encoders import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Encoder,
    EncoderInfo,
    get_encoder_info,
    load_encoder,
)
from histoguard.errors import EncoderError, UnsafeWeightsError, WeightsError

# --- helpers ---------------------------------------------------------------------------------


def _tiles(batch: int, side: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (batch, side, side, 3), dtype=np.uint8)


def _assert_close(got: np.ndarray | torch.Tensor, expected: np.ndarray | torch.Tensor) -> None:
    got_t, expected_t = torch.as_tensor(got).float(), torch.as_tensor(expected).float()
    assert got_t.shape == expected_t.shape
    scale = max(1.0, float(expected_t.abs().max()))
    assert float((got_t - expected_t).abs().max()) <= 1e-5 * scale


class _TouchOnUnpickle:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[Path]]:
        return (pathlib.Path.touch, (self.marker,))


# --- transformers ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Any]]:
    """Tiny random ViT and DINOv2 backbones saved with save_pretrained: name -> (dir, model)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    small = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}
    models = {
        "vit": transformers.ViTModel(
            transformers.ViTConfig(**small, intermediate_size=64, image_size=224, patch_size=32)
        ),
        "dinov2": transformers.Dinov2Model(
            transformers.Dinov2Config(**small, mlp_ratio=2, image_size=224, patch_size=32)
        ),
    }
    saved = {}
    for name, model in models.items():
        directory = tmp_path_factory.mktemp(name)
        model.save_pretrained(directory, safe_serialization=True)
        saved[name] = (directory, model.eval())
    return saved


@pytest.mark.parametrize("name", ["vit", "dinov2"])
def test_hf_directory_gives_the_transformers_cls_token(
    hf_models: dict[str, tuple[Path, Any]], name: str
) -> None:
    from histoguard.encoders._hf import load_hf_encoder

    directory, model = hf_models[name]
    encoder = load_hf_encoder(directory)
    assert (encoder.info.name, encoder.embed_dim, encoder.info.input_size) == ("hf-auto", 32, 224)
    assert (encoder.info.mean, encoder.info.std) == (IMAGENET_MEAN, IMAGENET_STD)
    tiles = _tiles(2, 256)  # resized to 224 by preprocess
    batch = encoder.preprocess(tiles)
    with torch.no_grad():
        expected = model(pixel_values=batch).last_hidden_state[:, 0]
    _assert_close(encoder.encode(tiles), expected)


def test_hf_auto_factory_builds_the_module(hf_models: dict[str, tuple[Path, Any]]) -> None:
    directory, model = hf_models["vit"]
    module = load_encoder("hf-auto", weights=directory).module
    assert module.encoder_info.embed_dim == 32  # what a registry hook would use
    batch = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        _assert_close(module(batch), model(pixel_values=batch).last_hidden_state[:, 0])


def test_hf_info_reads_the_processor(tmp_path: Path) -> None:
    from histoguard.encoders._hf import hf_info

    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 48, "image_size": 518}))
    assert hf_info(tmp_path).input_size == 518
    processor = {
        "do_center_crop": True,
        "crop_size": {"height": 112, "width": 112},
        "size": {"shortest_edge": 128},
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.25, 0.25, 0.25],
    }
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(processor))
    info = hf_info(tmp_path)
    assert (info.embed_dim, info.input_size) == (48, 112)
    assert (info.mean, info.std) == ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    processor.update(do_center_crop=False, image_std=[1, 2])
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(processor))
    with pytest.raises(WeightsError, match="image_std"):
        hf_info(tmp_path)


def test_hf_presets_check_the_hidden_size(hf_models: dict[str, tuple[Path, Any]]) -> None:
    info = get_encoder_info("phikon")
    assert (info.embed_dim, info.input_size, info.licence) == (768, 224, "Owkin non-commercial")
    assert "save_pretrained" in info.weights_hint
    assert get_encoder_info("phikon-v2").embed_dim == 1024
    with pytest.raises(WeightsError, match="hidden size 32"):
        load_encoder("phikon", weights=hf_models["vit"][0])


def test_hf_pickle_only_directory_needs_consent(
    hf_models: dict[str, tuple[Path, Any]], tmp_path: Path
) -> None:
    from histoguard.encoders._hf import load_hf_encoder

    source, model = hf_models["vit"]
    shutil.copy(source / "config.json", tmp_path / "config.json")
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(UnsafeWeightsError, match="allow-pickle"):
        load_hf_encoder(tmp_path)
    encoder = load_hf_encoder(tmp_path, allow_pickle=True)
    batch = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        _assert_close(encoder.module(batch), model(pixel_values=batch).last_hidden_state[:, 0])


def test_hf_hostile_pickle_directory_runs_nothing(
    hf_models: dict[str, tuple[Path, Any]], tmp_path: Path
) -> None:
    from histoguard.encoders._hf import load_hf_encoder

    shutil.copy(hf_models["vit"][0] / "config.json", tmp_path / "config.json")
    marker = tmp_path / "PWNED"
    torch.save({"payload": _TouchOnUnpickle(marker)}, tmp_path / "pytorch_model.bin")
    for allow_pickle in (False, True):
        with pytest.raises(WeightsError):
            load_hf_encoder(tmp_path, allow_pickle=allow_pickle)
    assert not marker.exists()


def test_hf_directory_problems(hf_models: dict[str, tuple[Path, Any]], tmp_path: Path) -> None:
    from histoguard.encoders._hf import load_hf_encoder

    with pytest.raises(WeightsError, match="config.json"):
        load_hf_encoder(tmp_path)
    vit_dir, dino_dir = hf_models["vit"][0], hf_models["dinov2"][0]
    shutil.copy(vit_dir / "config.json", tmp_path / "config.json")
    with pytest.raises(WeightsError, match="no weights file"):
        load_hf_encoder(tmp_path)
    # DINOv2 weights under a ViT config: transformers would fill the gaps with random values.
    shutil.copy(dino_dir / "model.safetensors", tmp_path / "model.safetensors")
    with pytest.raises(WeightsError, match="do not fit"):
        load_hf_encoder(tmp_path)
    # A lying header is caught before transformers parses the file.
    data = (vit_dir / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[:-64])
    with pytest.raises(WeightsError, match="truncated"):
        load_hf_encoder(tmp_path)


# --- ONNX and TorchScript ----------------------------------------------------------------------


class _TinyNet(torch.nn.Module):
    """(B, 3, 32, 32) -> (B, 5): patchify conv, mean pool, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, kernel_size=8, stride=8)
        self.head = torch.nn.Linear(8, 5)

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(tiles)).mean(dim=(2, 3)))


def _unused_factory(weights: Path | None, *, allow_pickle: bool) -> torch.nn.Module:
    raise AssertionError("not called")


@pytest.fixture
def tiny_encoder() -> Encoder:
    torch.manual_seed(0)
    info = EncoderInfo(
        name="tiny-test",
        embed_dim=5,
        input_size=32,
        mean=(0.5, 0.4, 0.3),
        std=(0.2, 0.25, 0.3),
        licence="MIT",
        citation="a test",
        factory=_unused_factory,
    )
    return Encoder(info, _TinyNet())


_METADATA_FIELDS = ("name", "embed_dim", "input_size", "mean", "std", "licence", "citation")


def _assert_same_metadata(got: EncoderInfo, expected: EncoderInfo) -> None:
    assert {f: getattr(got, f) for f in _METADATA_FIELDS} == {
        f: getattr(expected, f) for f in _METADATA_FIELDS
    }


def test_onnx_export_round_trip(tiny_encoder: Encoder, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from histoguard.encoders._onnx import export_onnx, load_onnx_encoder

    path = export_onnx(tiny_encoder, tmp_path / "out" / "tiny.onnx")
    assert [p.name for p in path.parent.iterdir()] == ["tiny.onnx"]  # no staging left behind
    loaded = load_onnx_encoder(path)
    _assert_same_metadata(loaded.info, tiny_encoder.info)
    for batch, side in [(1, 32), (3, 40)]:
        tiles = _tiles(batch, side, seed=batch)
        _assert_close(loaded.encode(tiles), tiny_encoder.encode(tiles))
    via_registry = load_encoder("onnx", weights=path)
    batch_t = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        _assert_close(via_registry.module(batch_t), tiny_encoder.module(batch_t))


def test_onnx_without_metadata_needs_normalisation(tiny_encoder: Encoder, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    from histoguard.encoders._onnx import METADATA_KEY, export_onnx, load_onnx_encoder

    path = export_onnx(tiny_encoder, tmp_path / "tiny.onnx")
    model = onnx.load(str(path))
    kept = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, str(path))
    with pytest.raises(EncoderError, match="mean, std"):
        load_onnx_encoder(path)
    loaded = load_onnx_encoder(path, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    # Width and tile side come from the graph's static shapes.
    assert (loaded.info.name, loaded.embed_dim, loaded.info.input_size) == ("onnx", 5, 32)
    tiles = _tiles(2, 32)
    _assert_close(loaded.encode(tiles), tiny_encoder.encode(tiles))


def test_onnx_rejects_non_models(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from histoguard.encoders._onnx import load_onnx_encoder

    with pytest.raises(WeightsError, match="no such ONNX file"):
        load_onnx_encoder(tmp_path / "absent.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x07 definitely not a model")
    with pytest.raises(WeightsError, match=r"junk\.onnx"):
        load_onnx_encoder(junk)


def test_exports_are_checked_against_the_original(tiny_encoder: Encoder) -> None:
    from histoguard.encoders._export import check_same_features

    batch = torch.randn(3, 3, 32, 32)
    check_same_features(tiny_encoder, tiny_encoder.module, batch, "test")
    with pytest.raises(EncoderError, match="not faithful"):
        check_same_features(tiny_encoder, _TinyNet(), batch, "test")


def test_torchscript_export_round_trip(tiny_encoder: Encoder, tmp_path: Path) -> None:
    from histoguard.encoders._torchscript import export_torchscript, load_torchscript_encoder

    path = export_torchscript(tiny_encoder, tmp_path / "tiny.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.pt"]
    loaded = load_torchscript_encoder(path)
    _assert_same_metadata(loaded.info, tiny_encoder.info)
    for batch, side in [(1, 32), (3, 40)]:
        tiles = _tiles(batch, side, seed=batch)
        _assert_close(loaded.encode(tiles), tiny_encoder.encode(tiles))
    via_registry = load_encoder("torchscript", weights=path)
    batch_t = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        _assert_close(via_registry.module(batch_t), tiny_encoder.module(batch_t))


def test_torchscript_export_of_a_transformers_model(
    hf_models: dict[str, tuple[Path, Any]], tmp_path: Path
) -> None:
    from histoguard.encoders._hf import load_hf_encoder
    from histoguard.encoders._torchscript import export_torchscript, load_torchscript_encoder

    encoder = load_hf_encoder(hf_models["dinov2"][0])
    loaded = load_torchscript_encoder(export_torchscript(encoder, tmp_path / "dino.pt"))
    tiles = _tiles(2, 224)
    _assert_close(loaded.encode(tiles), encoder.encode(tiles))


@pytest.mark.parametrize("kind", ["torch-zip", "plain-pickle"])
def test_torchscript_loader_never_unpickles_checkpoints(tmp_path: Path, kind: str) -> None:
    from histoguard.encoders._torchscript import load_torchscript_encoder

    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    payload = {"weight": torch.zeros(1), "payload": _TouchOnUnpickle(marker)}
    if kind == "torch-zip":
        torch.save(payload, path)
    else:
        import pickle

        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(WeightsError, match=r"evil\.pt"):
        load_torchscript_encoder(path)
    assert not marker.exists()


# --- timm presets ------------------------------------------------------------------------------

_TIMM_EXPECTED = {
    "uni": (1024, IMAGENET_MEAN, IMAGENET_STD, "MahmoodLab/UNI"),
    "uni2-h": (1536, IMAGENET_MEAN, IMAGENET_STD, "MahmoodLab/UNI2-h"),
    "virchow2": (2560, IMAGENET_MEAN, IMAGENET_STD, "paige-ai/Virchow2"),
    "h-optimus-0": (
        1536,
        (0.707223, 0.578729, 0.703617),
        (0.211883, 0.230117, 0.177517),
        "bioptimus/H-optimus-0",
    ),
    "h-optimus-1": (
        1536,
        (0.707223, 0.578729, 0.703617),
        (0.211883, 0.230117, 0.177517),
        "bioptimus/H-optimus-1",
    ),
    "prov-gigapath": (1536, IMAGENET_MEAN, IMAGENET_STD, "prov-gigapath/prov-gigapath"),
}


@pytest.mark.parametrize("name", sorted(_TIMM_EXPECTED))
def test_timm_presets_are_listed_with_their_metadata(name: str) -> None:
    embed_dim, mean, std, repo = _TIMM_EXPECTED[name]
    info = get_encoder_info(name)
    assert (info.embed_dim, info.input_size, info.mean, info.std) == (embed_dim, 224, mean, std)
    assert info.needs_weights and info.gated
    assert f"huggingface.co/{repo}" in info.weights_hint
    assert info.citation and info.licence


@pytest.mark.parametrize("name", sorted(_TIMM_EXPECTED))
def test_timm_presets_need_timm(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now raises ImportError
    weights = tmp_path / "w.safetensors"
    save_file({"w": torch.zeros(1)}, str(weights))
    with pytest.raises(EncoderError, match=r"pip install histoguard\[timm\]"):
        load_encoder(name, weights=weights)


class _FakeTokenModel(torch.nn.Module):
    """Stands in for a timm ViT: (B, 3, H, W) -> (B, 5 + H*W, 4) tokens; 5 prefix tokens."""

    num_prefix_tokens = 5

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(3, 4)

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        patches = self.proj(tiles.flatten(2).transpose(1, 2))
        prefix = patches[:, :1].expand(-1, self.num_prefix_tokens, -1) * 2.0
        return torch.cat([prefix, patches], dim=1)


@pytest.fixture
def fake_timm(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    """Installs a stand-in ``timm`` whose create_model records its calls."""
    calls: list[tuple[str, dict[str, Any]]] = []

    def create_model(name: str, pretrained: bool = False, **kwargs: Any) -> torch.nn.Module:
        assert pretrained is False  # nothing may be downloaded
        calls.append((name, kwargs))
        return _FakeTokenModel()

    timm = types.ModuleType("timm")
    timm.create_model = create_model  # type: ignore[attr-defined]
    timm.layers = types.SimpleNamespace(SwiGLUPacked=type("SwiGLUPacked", (), {}))  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "timm", timm)
    return calls


def test_timm_preset_builds_offline_and_loads_strictly(
    fake_timm: list[tuple[str, dict[str, Any]]], tmp_path: Path
) -> None:
    reference = _FakeTokenModel()
    weights = tmp_path / "uni.safetensors"
    save_file(reference.state_dict(), str(weights))
    encoder = load_encoder("uni", weights=weights)
    assert fake_timm == [
        (
            "vit_large_patch16_224",
            {
                "img_size": 224,
                "patch_size": 16,
                "init_values": 1e-5,
                "num_classes": 0,
                "dynamic_img_size": True,
            },
        )
    ]
    assert torch.equal(encoder.module.proj.weight, reference.proj.weight)

    save_file({"other": torch.zeros(3)}, str(weights))
    with pytest.raises(WeightsError, match="do not fit 'uni'"):
        load_encoder("uni", weights=weights)
    pickled = tmp_path / "uni.bin"
    torch.save(reference.state_dict(), pickled)
    with pytest.raises(UnsafeWeightsError):
        load_encoder("uni", weights=pickled)
    assert isinstance(
        load_encoder("uni", weights=pickled, allow_pickle=True).module, torch.nn.Module
    )


def test_virchow2_embedding_is_cls_and_mean_patch(
    fake_timm: list[tuple[str, dict[str, Any]]], tmp_path: Path
) -> None:
    weights = tmp_path / "virchow2.safetensors"
    save_file(_FakeTokenModel().state_dict(), str(weights))
    module = load_encoder("virchow2", weights=weights).module
    ((name, kwargs),) = fake_timm
    assert name == "vit_huge_patch14_224"
    assert kwargs["mlp_layer"].__name__ == "SwiGLUPacked"
    assert kwargs["act_layer"] is torch.nn.SiLU
    assert (kwargs["reg_tokens"], kwargs["mlp_ratio"], kwargs["global_pool"]) == (4, 5.3375, "")
    tiles = torch.randn(2, 3, 4, 4)
    with torch.no_grad():
        tokens = module.model(tiles)
        expected = torch.cat([tokens[:, 0], tokens[:, 5:].mean(dim=1)], dim=-1)
        got = module(tiles)
    assert got.shape == (2, 8)
    _assert_close(got, expected)
