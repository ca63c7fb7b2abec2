"""A folder of tile images read as one slide: listing, per-tile decode errors, the folder rule."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from histoguard import SlideNotFoundError, UnsupportedFormatError
from histoguard.slide._tile_folder import TileFolder, is_tile_folder


def _png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


#: a.png: two colours side by side (a one-colour tile would be refused as blank).
A_PIXELS = np.full((32, 32, 3), (200, 40, 90), np.uint8)
A_PIXELS[:, 16:] = (90, 40, 200)


@pytest.fixture
def mixed_folder(tmp_path: Path) -> Path:
    """a.png 32x32, b.jpg 64x64, c.png 48x40 RGBA, d.png truncated, e.png text, + non-tiles."""
    folder = tmp_path / "tiles"
    folder.mkdir()
    Image.fromarray(A_PIXELS).save(folder / "a.png")
    ramp = np.repeat(np.linspace(0, 255, 64).astype(np.uint8)[None, :, None], 64, axis=0)
    Image.fromarray(np.repeat(ramp, 3, axis=2)).save(folder / "b.jpg", quality=95)
    rgba = np.zeros((40, 48, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:20, :, 3] = 255  # top half opaque red, bottom half fully transparent
    Image.fromarray(rgba).save(folder / "c.png")
    full = _png_bytes(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    (folder / "d.png").write_bytes(full[: len(full) // 2])
    (folder / "e.png").write_text("this is not an image\n")
    (folder / "notes.txt").write_text("ignored\n")
    (folder / "._a.png").write_bytes(b"\0\5\26\7 macOS resource fork")  # hidden: ignored
    (folder / "sub").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "sub" / "x.png")  # not searched
    return folder


def test_lists_only_its_own_visible_tile_images_sorted(mixed_folder: Path) -> None:
    folder = TileFolder.open(mixed_folder)
    assert folder.names == ("a.png", "b.jpg", "c.png", "d.png", "e.png")
    assert len(folder) == 5


def test_coords_are_index_and_zero(mixed_folder: Path) -> None:
    coords = TileFolder.open(mixed_folder).coords()
    assert coords.dtype == np.int64
    assert coords.tolist() == [[0, 0], [1, 0], [2, 0], [3, 0], [4, 0]]


def test_reads_good_tiles_and_reports_each_bad_one(mixed_folder: Path) -> None:
    folder = TileFolder.open(mixed_folder)
    tiles, failures = folder.read([4, 0, 1, 2, 3], size=32)
    assert tiles.shape == (3, 32, 32, 3) and tiles.dtype == np.uint8
    assert [index for index, _ in failures] == [4, 3]
    assert "e.png" in failures[0][1] and "d.png" in failures[1][1]
    np.testing.assert_array_equal(tiles[0], A_PIXELS)
    assert abs(int(tiles[1].mean()) - 128) <= 2  # b.jpg shrunk from 64 px
    # c.png: transparent pixels are composited onto white, like slide background.
    assert tiles[2][0].tolist()[0] == [255, 0, 0]
    assert tiles[2][-1].tolist()[0] == [255, 255, 255]


def test_native_size_needs_tiles_of_one_size(mixed_folder: Path) -> None:
    folder = TileFolder.open(mixed_folder)
    tiles, failures = folder.read([0, 0])
    assert tiles.shape == (2, 32, 32, 3) and failures == []
    with pytest.raises(ValueError, match="differ in size"):
        folder.read([0, 1])


def test_nothing_readable_gives_an_empty_batch(mixed_folder: Path) -> None:
    tiles, failures = TileFolder.open(mixed_folder).read([3, 4], size=16)
    assert tiles.shape == (0, 16, 16, 3)
    assert len(failures) == 2


def test_bad_indices_and_sizes_are_errors(mixed_folder: Path) -> None:
    folder = TileFolder.open(mixed_folder)
    with pytest.raises(IndexError):
        folder.read([5])
    with pytest.raises(IndexError):
        folder.read([-1])
    with pytest.raises(ValueError):
        folder.read([0], size=0)


def test_pillow_pixel_limit_is_respected_per_tile(
    mixed_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Stand-in for a decompression bomb: lower the limit below a 32x32 tile for this test only.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    tiles, failures = TileFolder.open(mixed_folder).read([0])
    assert len(tiles) == 0
    assert failures[0][0] == 0 and "a.png" in failures[0][1]


def test_open_errors(tmp_path: Path) -> None:
    with pytest.raises(SlideNotFoundError):
        TileFolder.open(tmp_path / "missing")
    (tmp_path / "file.png").write_bytes(b"")
    with pytest.raises(UnsupportedFormatError, match="not a folder"):
        TileFolder.open(tmp_path / "file.png")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(UnsupportedFormatError, match="no tile images in"):
        TileFolder.open(tmp_path / "empty")


def test_is_tile_folder_rule(tmp_path: Path, mixed_folder: Path) -> None:
    assert is_tile_folder(mixed_folder)  # bad tiles do not change what the folder is
    assert not is_tile_folder(mixed_folder / "a.png")
    assert not is_tile_folder(tmp_path)  # a folder of folders
    assert not is_tile_folder(tmp_path / "missing")

    def folder_with(name: str) -> Path:
        folder = tmp_path / f"with-{name}"
        folder.mkdir()
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "tile.png")
        return folder / name

    (folder_with("scan.svs")).write_bytes(b"II*\0")
    assert not is_tile_folder(tmp_path / "with-scan.svs")
    big = folder_with("big.png")
    Image.fromarray(np.zeros((1, 4097, 3), np.uint8)).save(big)
    assert not is_tile_folder(big.parent)
    tiled = folder_with("tiled.tif")
    tifffile.imwrite(tiled, np.zeros((64, 64, 3), np.uint8), tile=(16, 16))
    assert not is_tile_folder(tiled.parent)
    pages = folder_with("pages.tiff")
    first, second = (Image.fromarray(np.zeros((s, s, 3), np.uint8)) for s in (16, 8))
    first.save(pages, save_all=True, append_images=[second])
    assert not is_tile_folder(pages.parent)
    plain_tiff = folder_with("plain.tif")
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(plain_tiff)
    assert is_tile_folder(plain_tiff.parent)


def test_a_stray_slide_or_large_image_is_left_out_not_a_reason_to_give_up(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "patient1"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(20):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
            folder / f"t{i}.png"
        )
    Image.fromarray(np.zeros((8, 5000, 3), np.uint8)).save(folder / "overview.png")
    (folder / "scan.svs").write_bytes(b"II*\0")
    assert is_tile_folder(folder)
    tiles = TileFolder.open(folder)
    assert len(tiles) == 20 and "overview.png" not in tiles.names
    assert tiles.left_out == (
        ("overview.png", "5000x8 px, larger than a tile"),
        ("scan.svs", "a whole-slide file"),
    )


@pytest.mark.parametrize(
    ("pixels", "why"),
    [
        (np.zeros((32, 32, 3), np.uint8), "one colour"),
        (np.full((32, 32, 3), 255, np.uint8), "one colour"),
        (np.zeros((32, 32, 4), np.uint8), "one colour"),  # fully transparent: white
        (np.array([[[10, 200, 30]]], np.uint8), "too small"),
    ],
)
def test_blank_and_tiny_tiles_are_failures_not_tissue(
    tmp_path: Path, pixels: np.ndarray, why: str
) -> None:
    folder = tmp_path / "tiles"
    folder.mkdir()
    Image.fromarray(A_PIXELS).save(folder / "a.png")
    Image.fromarray(pixels).save(folder / "b.png")
    tiles, failures = TileFolder.open(folder).read([0, 1], size=32)
    assert len(tiles) == 1
    assert failures[0][0] == 1 and "b.png" in failures[0][1] and why in failures[0][1]


def test_real_lc25000_tiles(shared_data: Path) -> None:
    lung = shared_data / "tiles" / "lc25000_lung"
    assert is_tile_folder(lung / "lung_aca")
    assert not is_tile_folder(lung)  # one subfolder per class: a dataset, not one slide
    folder = TileFolder.open(lung / "lung_aca")
    assert len(folder) > 100 and all(name.endswith(".jpeg") for name in folder.names[:5])
    tiles, failures = folder.read([0, 1, 2])
    assert failures == [] and tiles.shape == (3, 224, 224, 3)
    small, _ = folder.read([0], size=112)
    assert small.shape == (1, 112, 112, 3)
    # Area-averaged shrinking keeps the colour: same mean as the full-size tile.
    assert np.abs(small[0].mean(axis=(0, 1)) - tiles[0].mean(axis=(0, 1))).max() < 1.0


def test_each_sub_folder_of_tiles_is_one_slide(tmp_path: Path) -> None:
    from histoguard.slide import find_slides
    from histoguard.slide._tile_folder import tile_folders_in

    for patient in ("patient-b", "patient-a"):
        (tmp_path / patient).mkdir()
        for i in range(3):
            tile = np.full((16, 16, 3), 40 * i, np.uint8)
            Image.fromarray(tile).save(tmp_path / patient / f"{i}.png")
    (tmp_path / "empty").mkdir()
    (tmp_path / ".cache").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / ".cache" / "x.png")
    expected = [tmp_path / "patient-a", tmp_path / "patient-b"]
    assert tile_folders_in(tmp_path) == expected
    assert find_slides([tmp_path], tile_folders=True) == expected
    assert find_slides([tmp_path / "patient-a"], tile_folders=True) == expected[:1]
    # Tiling takes slide files only: the tile folders are not slides to tile.
    assert find_slides([tmp_path]) == []
