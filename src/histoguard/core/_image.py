"""One way from an image file to encoder-ready pixels: one decoder, one tile resize.

Every tile image histoguard reads (tile folders, tile tables, class folders, stain references,
simulated-center references, the JPEG round trip of the stress tests) is decoded by
:func:`decode_image`, and every tile brought to an encoder's input size is resized by
:func:`resize_tiles` (float tensors, differentiable: ``Encoder.preprocess`` and the attacks'
``PixelEncoder``) or :func:`resize_tile_images` (uint8 arrays: the tile loaders), following the
encoder's :class:`ResizePolicy`. The same image therefore gives the same pixels, and the same
embedding, whichever route it takes.

Slide regions are not resampled here: reading a slide at a target resolution (mpp) is the slide
reader's job (``histoguard.slide``); this module only fits tiles to an encoder.

torch is imported inside the resize functions, so importing this module stays light.
"""

from __future__ import annotations

import io
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar

import numpy as np
import numpy.typing as npt
from PIL import Image

from histoguard.errors import ImageError, ImageTooLargeError

if TYPE_CHECKING:
    import torch

Interpolation = Literal["bilinear", "bicubic"]
Aspect = Literal["stretch", "center-crop", "refuse"]
_INTERPOLATIONS: Final = ("bilinear", "bicubic")
_ASPECTS: Final = ("stretch", "center-crop", "refuse")

# What Pillow raises for files it cannot decode, across its format plugins.
_T = TypeVar("_T")
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error)


class _PillowLimit:
    """Sentinel default of ``max_pixels``: Pillow's ``Image.MAX_IMAGE_PIXELS`` at call time."""

    def __repr__(self) -> str:
        return "PILLOW_LIMIT"


#: ``max_pixels`` default: whatever Pillow's decompression-bomb guard is when the call is made.
PILLOW_LIMIT: Final = _PillowLimit()


@dataclass(frozen=True, kw_only=True)
class ResizePolicy:
    """How an encoder wants tiles of another size brought to its square input.

    Attributes:
        interpolation: ``"bilinear"`` or ``"bicubic"`` (torch ``interpolate``, half-pixel
            centres; bicubic output is clamped to the input range).
        antialias: low-pass filter when shrinking (torch's ``antialias=True``), as PIL does.
        aspect: what to do with a non-square tile: ``"center-crop"`` keeps the largest centred
            square (the tissue keeps its shape), ``"stretch"`` resizes width and height
            independently (shapes are distorted), ``"refuse"`` raises :class:`ImageError`.
            Square tiles are only resized, whatever the aspect.
    """

    interpolation: Interpolation = "bilinear"
    antialias: bool = True
    aspect: Aspect = "center-crop"

    def __post_init__(self) -> None:
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(
                f"interpolation must be one of {_INTERPOLATIONS}, got {self.interpolation!r}"
            )
        if self.aspect not in _ASPECTS:
            raise ValueError(f"aspect must be one of {_ASPECTS}, got {self.aspect!r}")
        if not isinstance(self.antialias, bool):
            raise ValueError(f"antialias must be true or false, got {self.antialias!r}")

    def describe(self) -> str:
        """One phrase for listings, e.g. ``"bilinear antialiased, center-crop"``."""
        filtered = " antialiased" if self.antialias else ""
        return f"{self.interpolation}{filtered}, {self.aspect}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible settings."""
        return {
            "interpolation": self.interpolation,
            "antialias": self.antialias,
            "aspect": self.aspect,
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ResizePolicy:
        """The policy saved by :meth:`to_dict`; missing keys take the defaults.

        Raises:
            ValueError: an unknown key or value.
        """
        unknown = set(values) - {"interpolation", "antialias", "aspect"}
        if unknown:
            raise ValueError(f"unknown resize setting(s) {sorted(unknown)}")
        return cls(**values)


def decode_image(
    source: str | Path | bytes,
    *,
    max_pixels: int | _PillowLimit | None = PILLOW_LIMIT,
    name: str = "in-memory image",
) -> npt.NDArray[np.uint8]:
    """Decode an image file (or its bytes) to ``(H, W, 3)`` uint8 RGB.

    Transparent pixels are composited onto white, like slide background; palette, greyscale,
    CMYK and 16-bit greyscale images are converted to 8-bit RGB (16 bits scaled, not clipped).

    Args:
        source: a PNG, JPEG, TIFF, ... file, or the encoded bytes.
        max_pixels: refuse images with more pixels than this (width x height). The default
            is Pillow's ``Image.MAX_IMAGE_PIXELS`` at the time of the call; None: no limit of our
            own. Pillow's global guard is never changed, so images beyond twice it stay refused.
        name: what to call ``source`` in error messages when it is bytes.

    Raises:
        ImageError: missing file or undecodable content; the message names the file.
        ImageTooLargeError: more pixels than ``max_pixels`` (or than Pillow's guard allows).
    """
    return _opened(source, max_pixels, name, _to_rgb)


def image_size(
    source: str | Path | bytes,
    *,
    max_pixels: int | _PillowLimit | None = PILLOW_LIMIT,
    name: str = "in-memory image",
) -> tuple[int, int]:
    """``(width, height)`` in pixels of an image file, read from its header (nothing decoded),
    with the same checks and errors as :func:`decode_image`."""
    return _opened(source, max_pixels, name, lambda image: (image.width, image.height))


def _opened(
    source: str | Path | bytes,
    max_pixels: int | _PillowLimit | None,
    name: str,
    use: Callable[[Image.Image], _T],
) -> _T:
    """``use(image)`` on the opened image once its size is within ``max_pixels``."""
    label = name if isinstance(source, bytes) else str(source)
    limit = Image.MAX_IMAGE_PIXELS if isinstance(max_pixels, _PillowLimit) else max_pixels
    handle: Path | io.BytesIO = io.BytesIO(source) if isinstance(source, bytes) else Path(source)
    if isinstance(handle, Path) and not handle.is_file():
        raise ImageError(label, "no such image file", "Check the path")
    try:
        with warnings.catch_warnings():
            # The explicit limit below replaces Pillow's warning; its guard is left as it is.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(handle) as image:
                if limit is not None and image.width * image.height > limit:
                    size = f"{image.width}x{image.height}"
                    raise ImageTooLargeError(
                        label,
                        f"image is {size} pixels, above the limit of {limit}",
                        "Tile it first, or pass a larger max_pixels",
                    )
                return use(image)
    except ImageError:
        raise
    except Image.DecompressionBombError as error:
        raise ImageTooLargeError(label, str(error), "Tile it first") from error
    except _DECODE_ERRORS as error:
        raise ImageError(
            label, f"cannot decode the image ({error})", "Re-export or remove it"
        ) from error


def _to_rgb(image: Image.Image) -> npt.NDArray[np.uint8]:
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # Pillow's convert("RGB") clips 16-bit values at 255; scale 0..65535 to 0..255 instead.
        grey = np.asarray(image).astype(np.float64)
        scaled = np.rint(np.clip(grey, 0, 65535) * (255.0 / 65535.0)).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(scaled[..., None], 3, axis=2))
    if "A" in image.getbands() or "transparency" in image.info:
        return composite_on_white(np.asarray(image.convert("RGBA")))
    return np.ascontiguousarray(np.asarray(image.convert("RGB")))


def composite_on_white(rgba: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """Composite non-premultiplied ``(H, W, 4)`` uint8 RGBA onto white -> ``(H, W, 3)`` uint8."""
    rgb = rgba[..., :3]
    alpha = rgba[..., 3]
    if alpha.size == 0 or alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    a = alpha[..., None].astype(np.float32) / 255.0
    blended = rgb.astype(np.float32) * a + 255.0 * (1.0 - a)
    out: npt.NDArray[np.uint8] = np.rint(blended).astype(np.uint8)
    return out


def resize_tiles(
    pixels: torch.Tensor, size: int, policy: ResizePolicy, *, what: str = "tiles"
) -> torch.Tensor:
    """Bring ``(B, C, H, W)`` float tiles to ``(B, C, size, size)`` following ``policy``.

    Differentiable; tiles already ``size`` x ``size`` are returned as they are. This is the one
    tile resize of histoguard (``Encoder.preprocess``, the attacks, the tile loaders).

    Raises:
        ImageError: the tiles are not square and ``policy.aspect`` is ``"refuse"`` (``what``
            names them in the message).
        ValueError: ``size`` is not positive.
    """
    import torch.nn.functional as F

    if size < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size}")
    height, width = int(pixels.shape[-2]), int(pixels.shape[-1])
    if height != width:
        if policy.aspect == "refuse":
            raise ImageError(
                what,
                f"tiles are {width}x{height} px, not square, and the encoder's resize policy "
                "refuses to crop or stretch them",
                "Crop the tiles square first",
            )
        if policy.aspect == "center-crop":
            side = min(height, width)
            top, left = (height - side) // 2, (width - side) // 2
            pixels = pixels[..., top : top + side, left : left + side]
    if tuple(pixels.shape[-2:]) == (size, size):
        return pixels
    out = F.interpolate(
        pixels,
        size=(size, size),
        mode=policy.interpolation,
        antialias=policy.antialias,
        align_corners=False,
    )
    if policy.interpolation == "bicubic":  # cubic weights overshoot; keep the input's range
        out = out.clamp(float(pixels.min()), float(pixels.max()))
    return out


def resize_tile_images(
    tiles: npt.NDArray[np.uint8], size: int, policy: ResizePolicy, *, what: str = "tiles"
) -> npt.NDArray[np.uint8]:
    """:func:`resize_tiles` for uint8 RGB: ``(B, H, W, 3)`` or ``(H, W, 3)`` -> the same with
    ``H = W = size`` (rounded to the nearest grey level). Unchanged when already that size.

    Raises:
        ImageError: non-square tiles under a ``"refuse"`` policy (``what`` names them).
    """
    import torch

    single = tiles.ndim == 3
    batch = tiles[None] if single else tiles
    if batch.shape[1:3] == (size, size):
        return tiles
    batch = np.ascontiguousarray(batch)
    if not batch.flags.writeable:  # decoded images are read-only views; torch warns on those
        batch = batch.copy()
    pixels = torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255.0
    resized = resize_tiles(pixels, size, policy, what=what)
    out = (resized * 255.0).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    array: npt.NDArray[np.uint8] = np.ascontiguousarray(out.numpy())
    return array[0] if single else array
