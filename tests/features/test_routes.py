"""Real slides through tiling and extraction by every route: the features agree.

Routes: each built-in encoder; a built-in encoder exported to ONNX and to TorchScript; a
randomly initialised transformers ViT and DINOv2 loaded from a local directory, compared with
calling transformers directly on the same tiles.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from histoguard.encoders import list_encoders, load_encoder
from histoguard.features import ExtractionConfig, extract_features, read_feature_file
from histoguard.slide import (
    TileSpec,
    TilingConfig,
    open_slide,
    read_coords_file,
    read_tiles,
    tile_slides,
)

TILING = TilingConfig(mpp=1.0, tile_size=224)


@pytest.fixture(scope="module")
def real_tiles(wsi_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """CMU-1 tiled at 1 µm/px: (slide, folder with its tile file)."""
    slide = wsi_dir / "CMU-1-Small-Region.svs"
    tiles_dir = tmp_path_factory.mktemp("tiles")
    report = tile_slides([slide], tiles_dir, TILING, progress=False)
    assert report.results[0].n_tiles >= 8
    return slide, tiles_dir


def _extract(
    real_tiles: tuple[Path, Path], out: Path, encoder: str, weights: Path | None = None
) -> np.ndarray:
    slide, tiles_dir = real_tiles
    config = ExtractionConfig(
        encoder=encoder,
        weights=weights,
        tiling=TILING,
        tiles_dir=tiles_dir,
        batch_size=8,
        readers=0,
    )
    report = extract_features([slide], out, config, progress=False)
    assert report.results[0].status == "done", report.results[0].message
    features = read_feature_file(out / f"{slide.stem}.h5")
    assert np.array_equal(features.coords, read_coords_file(tiles_dir / f"{slide.stem}.h5").coords)
    return features.features


@pytest.mark.parametrize("name", ["hg-cnn", "hg-d4", "hg-handcrafted"])
def test_every_builtin_encoder_runs_on_a_real_slide(
    real_tiles: tuple[Path, Path], tmp_path: Path, name: str
) -> None:
    features = _extract(real_tiles, tmp_path, name)
    info = next(i for i in list_encoders() if i.name == name)
    assert features.shape[1] == info.embed_dim
    assert np.isfinite(features).all()
    assert features.std(axis=0).max() > 0  # tiles differ, so do their embeddings


@pytest.mark.parametrize("route", ["onnx", "torchscript"])
def test_exported_encoder_gives_the_same_features(
    real_tiles: tuple[Path, Path], tmp_path: Path, route: str
) -> None:
    if route == "onnx":
        pytest.importorskip("onnxruntime")
    from histoguard.encoders._onnx import export_onnx
    from histoguard.encoders._torchscript import export_torchscript

    reference = _extract(real_tiles, tmp_path / "builtin", "hg-cnn")
    exporter = {"onnx": export_onnx, "torchscript": export_torchscript}[route]
    exported = exporter(load_encoder("hg-cnn"), tmp_path / f"hg-cnn.{route}")
    features = _extract(real_tiles, tmp_path / route, route, weights=exported)
    scale = np.abs(reference).max()
    np.testing.assert_allclose(features, reference, rtol=0, atol=1e-4 * scale)


@pytest.mark.parametrize("architecture", ["vit", "dinov2"])
def test_transformers_model_from_a_local_directory(
    real_tiles: tuple[Path, Path], tmp_path: Path, architecture: str
) -> None:
    transformers = pytest.importorskip("transformers")
    import torch

    common = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
              "intermediate_size": 64, "image_size": 224, "patch_size": 32}  # fmt: skip
    config_class = {"vit": transformers.ViTConfig, "dinov2": transformers.Dinov2Config}[
        architecture
    ]
    torch.manual_seed(0)
    model = transformers.AutoModel.from_config(config_class(**common)).eval()
    model.save_pretrained(tmp_path / "model", safe_serialization=True)
    features = _extract(real_tiles, tmp_path / "out", "hf-auto", weights=tmp_path / "model")

    slide, tiles_dir = real_tiles
    tiles_file = read_coords_file(tiles_dir / f"{slide.stem}.h5")
    spec = TileSpec.from_attrs(tiles_file.attrs)
    with open_slide(slide) as reader:
        reads = sorted(read_tiles(reader, spec, tiles_file.coords), key=lambda r: r.index)
    tiles = np.stack([r.tile for r in reads])
    encoder = load_encoder("hf-auto", weights=tmp_path / "model")
    with torch.inference_mode():
        direct = model(pixel_values=encoder.preprocess(tiles)).last_hidden_state[:, 0].numpy()
    np.testing.assert_allclose(features, direct, rtol=1e-4, atol=1e-5)
