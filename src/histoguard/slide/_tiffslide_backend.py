"""tiffslide back-end: OME-TIFF, SVS and other TIFF pyramids, JPEG2000 through imagecodecs."""

from __future__ import annotations

from typing import Any

import numpy as np

from histoguard.errors import CorruptSlideError
from histoguard.slide._openslide_like import OpenSlideLikeReader
from histoguard.slide._preflight import FileKind
from histoguard.slide._registry import register_backend


@register_backend(
    "tiffslide",
    priority=20,
    kinds={FileKind.TIFF},
    formats="OME-TIFF, SVS, tiled or stripped TIFF pyramids (JPEG, JPEG2000, LZW, ...)",
)
class TiffSlideReader(OpenSlideLikeReader):
    """Reads TIFF-based slides through tiffslide (pure Python on tifffile + imagecodecs)."""

    _prefix = "tiffslide"

    def _open_library(self) -> Any:
        import tiffslide

        try:
            return tiffslide.TiffSlide(str(self.path))
        except Exception as error:  # tifffile raises several unrelated types on bad files
            raise CorruptSlideError(
                self.path, f"tiffslide cannot open it ({error})", "Re-export or re-scan the slide"
            ) from error

    def read_associated_image(self, name: str) -> np.ndarray:
        return np.asarray(self._handle.associated_images[name].convert("RGB"))

    def _native_origin(self, x: int, y: int, level: int) -> tuple[int, int] | None:
        # tiffslide never interpolates: it cuts at int(x / downsample), from the same pages and
        # through the same tifffile decoders, so every compression tifffile reads is a plain copy.
        # (tiffslide's _read_region_loc_transform, without opening a handle for it)
        downsample = self.level_downsamples[level]
        return int(x / downsample), int(y / downsample)

    def _read_backend(self, x: int, y: int, width: int, height: int, level: int) -> np.ndarray:
        region = np.array(self._handle.read_region((x, y), level, (width, height), as_array=True))
        if region.ndim == 2:
            region = np.repeat(region[..., None], 3, axis=2)
        if region.shape[2] == 4:
            # tiffslide pads with zeros; only RGB(A) uint8 slides are supported downstream.
            region = region[..., :3]
        if region.dtype != np.uint8:
            raise CorruptSlideError(
                self.path,
                f"pixels are {region.dtype}, not 8-bit RGB",
                "Convert the slide to an 8-bit RGB pyramid (e.g. vips tiffsave --tile --pyramid)",
            )
        _whiten_padding(region, self._handle, x, y, level)
        return np.ascontiguousarray(region)


def _whiten_padding(region: np.ndarray, handle: Any, x: int, y: int, level: int) -> None:
    """tiffslide pads out-of-slide areas with black; histoguard's contract says white."""
    level_w, level_h = handle.level_dimensions[level]
    # tiffslide documents this hook as the place its level-0 -> level mapping lives.
    left, top = handle._read_region_loc_transform((x, y), level)
    height, width = region.shape[:2]
    x0, x1 = max(0, -left), min(width, level_w - left)
    y0, y1 = max(0, -top), min(height, level_h - top)
    if x0 == 0 and y0 == 0 and x1 == width and y1 == height:
        return
    inside = np.zeros((height, width), dtype=bool)
    if x1 > x0 and y1 > y0:
        inside[y0:y1, x0:x1] = True
    region[~inside] = 255
