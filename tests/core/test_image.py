"""One tile-image decoder and one tile resize: alpha on white, modes, the pixel limit, aspect."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from histoguard.core._image import (
    ResizePolicy,
    decode_image,
    resize_tile_images,
    resize_tiles,
)
from histoguard.errors import HistoguardError, ImageError, ImageTooLargeError


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_alpha_is_composited_on_white_exactly(tmp_path: Path) -> None:
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red stays red
    rgba[0, 1] = (0, 0, 0, 0)  # transparent black becomes white, not black
    rgba[0, 2] = (0, 0, 255, 128)  # half-transparent blue: 255 * (1 - 128/255) = 126.5 -> 127
    rgba[1] = (10, 20, 30, 51)  # 0.2 opacity: 10*0.2+204 = 206, 20*0.2+204 = 208, 30*0.2+204
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba, "RGBA").save(path)
    rgb = decode_image(path)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 3, 3)
    assert rgb[0].tolist() == [[255, 0, 0], [255, 255, 255], [127, 127, 255]]
    assert rgb[1, 0].tolist() == [206, 208, 210]


def test_palette_with_transparency_and_greyscale(tmp_path: Path) -> None:
    palette = Image.new("P", (4, 1))
    palette.putpalette([0, 0, 0, 200, 40, 90] + [0] * 762)
    palette.putdata([0, 1, 1, 0])
    palette.info["transparency"] = 0  # palette entry 0 is transparent
    rgb = decode_image(_png(palette), name="palette.png")
    assert rgb.tolist() == [[[255, 255, 255], [200, 40, 90], [200, 40, 90], [255, 255, 255]]]
    grey = decode_image(_png(Image.fromarray(np.array([[0, 77, 255]], np.uint8), "L")))
    assert grey.tolist() == [[[0, 0, 0], [77, 77, 77], [255, 255, 255]]]
    grey_alpha = Image.fromarray(np.array([[[50, 255], [50, 0]]], np.uint8), "LA")
    assert decode_image(_png(grey_alpha)).tolist() == [[[50, 50, 50], [255, 255, 255]]]


def test_sixteen_bit_greyscale_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 257 * 100, 65535]], np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert decode_image(path)[0, :, 0].tolist() == [0, 100, 255]


def test_pixel_limit_is_explicit_typed_and_leaves_pillow_alone(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(path)
    guard = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageTooLargeError, match=r"big.png: image is 50x40 pixels.*1999") as info:
        decode_image(path, max_pixels=1999)
    assert info.value.path == str(path)
    assert isinstance(info.value, ImageError) and isinstance(info.value, HistoguardError)
    assert guard == Image.MAX_IMAGE_PIXELS
    assert decode_image(path, max_pixels=2000).shape == (40, 50, 3)
    assert decode_image(path, max_pixels=None).shape == (40, 50, 3)


def test_default_limit_is_pillows_guard_at_call_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "tile.png"
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageTooLargeError, match="tile.png"):
        decode_image(path)


def test_missing_and_broken_files_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"nope.png: no such image file"):
        decode_image(tmp_path / "nope.png")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not really a jpeg")
    with pytest.raises(ImageError, match=r"broken.jpg: cannot decode the image") as info:
        decode_image(broken)
    clone = pickle.loads(pickle.dumps(info.value))
    assert type(clone) is ImageError and str(clone) == str(info.value)
    with pytest.raises(ImageError, match="upload.bin"):
        decode_image(b"garbage", name="upload.bin")


def _wide_tile() -> np.ndarray:
    """(2, 6, 3): columns 0 and 5 black, columns 1-4 a grey ramp."""
    tile = np.zeros((2, 6, 3), np.uint8)
    tile[:, 1:5] = np.array([40, 80, 120, 160], np.uint8)[None, :, None]
    return tile


def test_center_crop_keeps_the_middle_square_by_default() -> None:
    tile = _wide_tile()
    assert ResizePolicy().aspect == "center-crop"
    cropped = resize_tile_images(tile, 2, ResizePolicy())
    # The middle 2x2 of a 2x6 tile is columns 2-3, already the target size: copied exactly.
    np.testing.assert_array_equal(cropped, tile[:, 2:4])


def test_stretch_when_asked_keeps_the_whole_width() -> None:
    tile = _wide_tile()
    stretched = resize_tile_images(tile, 2, ResizePolicy(aspect="stretch"))
    cropped = resize_tile_images(tile, 2, ResizePolicy())
    assert stretched.shape == cropped.shape == (2, 2, 3)
    # Stretching averages the black border columns in; the crop never sees them.
    assert stretched[0, 0, 0] < cropped[0, 0, 0]
    assert not np.array_equal(stretched, cropped)


def test_refuse_raises_for_non_square_and_names_the_tiles() -> None:
    refuse = ResizePolicy(aspect="refuse")
    with pytest.raises(ImageError, match=r"slide7/a.png: tiles are 6x2 px, not square"):
        resize_tile_images(_wide_tile(), 2, refuse, what="slide7/a.png")
    square = np.zeros((4, 4, 3), np.uint8)
    assert resize_tile_images(square, 2, refuse).shape == (2, 2, 3)


def test_uint8_and_float_paths_are_one_resize() -> None:
    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 256, (2, 30, 40, 3), dtype=np.uint8)
    policy = ResizePolicy(interpolation="bicubic")
    as_uint8 = resize_tile_images(tiles, 16, policy)
    pixels = torch.from_numpy(tiles).permute(0, 3, 1, 2).float() / 255.0
    as_float = resize_tiles(pixels, 16, policy)
    expected = (as_float * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    np.testing.assert_array_equal(as_uint8, expected.numpy())
    assert float(as_float.min()) >= 0.0 and float(as_float.max()) <= 1.0  # bicubic clamped
    single = resize_tile_images(tiles[0], 16, policy)
    np.testing.assert_array_equal(single, as_uint8[0])


def test_tiles_at_the_target_size_are_untouched() -> None:
    tiles = np.random.default_rng(1).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    assert resize_tile_images(tiles, 8, ResizePolicy()) is tiles


def test_resize_is_differentiable() -> None:
    pixels = torch.rand(1, 3, 12, 20, requires_grad=True)
    resize_tiles(pixels, 6, ResizePolicy()).sum().backward()
    assert pixels.grad is not None
    # The centre crop drops the 4 outer columns on each side: they get no gradient.
    assert float(pixels.grad[..., :4].abs().sum()) == 0.0
    assert float(pixels.grad[..., 4:16].abs().min()) > 0.0


def test_policy_validation_and_round_trip() -> None:
    policy = ResizePolicy(interpolation="bicubic", antialias=False, aspect="stretch")
    assert ResizePolicy.from_dict(policy.to_dict()) == policy
    assert policy.describe() == "bicubic, stretch"
    assert ResizePolicy().describe() == "bilinear antialiased, center-crop"
    with pytest.raises(ValueError, match="aspect"):
        ResizePolicy(aspect="squash")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="interpolation"):
        ResizePolicy(interpolation="nearest")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown resize"):
        ResizePolicy.from_dict({"mode": "bilinear"})
