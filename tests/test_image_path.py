"""One tile-image path: the same real image embeds identically through `extract` (a tile folder)
and through `audit` (a tile table), because both decode and resize it the same way."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from histoguard.encoders import load_encoder
from histoguard.features import ExtractionConfig, extract_features, read_feature_file
from histoguard.robustness.data._embed import embed_tiles
from histoguard.robustness.data._tile_tables import load_tile_table

# Non-square (775 x 522) real GlaS tiles, not at hg-cnn's 224 px input size.
GLAS_TILES = ("testA_1.jpg", "testA_10.jpg")


@pytest.fixture
def glas_pair(shared_data: Path, tmp_path: Path) -> tuple[Path, Path]:
    """(a tile folder, a tile table) holding the same GlaS images (linked, not copied)."""
    images = shared_data / "tiles" / "glas" / "images"
    folder = tmp_path / "glas_slide"
    folder.mkdir()
    rows = ["path,label,center,slide_id"]
    for name in GLAS_TILES:
        (folder / name).symlink_to(images / name)
        rows.append(f"{images / name},benign,Warwick-UHCW,glas_slide")
    table = tmp_path / "tiles.csv"
    table.write_text("\n".join(rows) + "\n")
    return folder, table


@pytest.mark.integration
def test_extract_and_audit_embed_the_same_image_identically(
    glas_pair: tuple[Path, Path], tmp_path: Path
) -> None:
    folder, table = glas_pair
    config = ExtractionConfig(encoder="hg-cnn", readers=0, batch_size=2)
    report = extract_features([folder], tmp_path / "features", config)
    assert report.results[0].status == "done", report.results[0].message
    extracted = read_feature_file(tmp_path / "features" / "glas_slide.h5")
    assert extracted.tile_names == GLAS_TILES

    tiles = load_tile_table(table)
    assert tiles.load(np.arange(1)).shape == (1, 522, 775, 3)  # really non-square at source
    audited = embed_tiles(load_encoder("hg-cnn"), tiles, batch_size=2)

    assert audited.embeddings.shape == extracted.features.shape == (2, 256)
    # Same pixels in, same module: only float summation order may differ (was 0.9 % apart).
    np.testing.assert_allclose(audited.embeddings, extracted.features, rtol=0, atol=1e-6)


def test_extract_pixels_are_the_audit_pixels(glas_pair: tuple[Path, Path]) -> None:
    from histoguard.slide._tile_folder import TileFolder

    folder, table = glas_pair
    info = load_encoder("hg-cnn").info
    from_folder, failures = TileFolder.open(folder).read(
        [0, 1], size=info.input_size, resize=info.resize
    )
    assert failures == []
    from_table = load_tile_table(table).load_for(info)
    assert from_table.shape == (2, 224, 224, 3)
    np.testing.assert_array_equal(from_folder, from_table)
