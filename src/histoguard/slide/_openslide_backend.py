"""OpenSlide back-end: SVS, NDPI, MRXS, SCN, BIF, VMS, generic tiled TIFF and DICOM WSI."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import numpy as np

from histoguard.errors import CorruptSlideError, UnsupportedFormatError
from histoguard.slide._openslide_like import OpenSlideLikeReader
from histoguard.slide._preflight import FileKind
from histoguard.slide._reader import SlideReader, rgba_to_rgb
from histoguard.slide._registry import register_backend
from histoguard.slide._tiff_tiles import APERIO_JP2K_RGB, JPEG

#: Decoded-tile cache shared by a reader and its clones, in bytes (OpenSlide's own is 32 MiB).
SHARED_CACHE_BYTES = 128 * 1024 * 1024

#: OpenSlide formats whose levels are TIFF pages, read tile for tile as stored.
_TIFF_PAGE_VENDORS = frozenset({"aperio", "generic-tiff"})
#: Compressions whose direct decoding was checked equal to OpenSlide's (real SVS: JPEG and
#: Aperio's RGB JPEG2000; generated generic TIFF: YCbCr JPEG). Aperio's YCbCr JPEG2000 (33003)
#: is converted to RGB by OpenSlide's own code and stays with OpenSlide.
_NATIVE_COMPRESSIONS = frozenset({JPEG, APERIO_JP2K_RGB})


@register_backend(
    "openslide",
    priority=10,
    kinds={FileKind.TIFF, FileKind.DICOM, FileKind.MIRAX, FileKind.VMS, FileKind.SAKURA},
    formats="SVS, NDPI, MRXS, SCN, BIF, VMS, Sakura, generic tiled TIFF, DICOM WSI",
)
class OpenSlideReader(OpenSlideLikeReader):
    """Reads slides through openslide-python (the library ships in ``openslide-bin``)."""

    _prefix = "openslide"
    _cache: Any = None

    def _open_library(self) -> Any:
        import openslide

        try:
            handle = openslide.OpenSlide(str(self.path))
        except openslide.OpenSlideUnsupportedFormatError as error:
            raise UnsupportedFormatError(
                self.path, "OpenSlide does not recognise this file", "Try backend='tiffslide'"
            ) from error
        except openslide.OpenSlideError as error:
            raise CorruptSlideError(
                self.path, f"OpenSlide cannot open it ({error})", "Re-export or re-scan the slide"
            ) from error
        if self._cache is not None:
            handle.set_cache(self._cache)
        return handle

    def clone(self) -> SlideReader:
        """A reader with its own handle that shares this one's decoded-tile cache.

        Threads reading neighbouring tiles need the same source tiles; with one shared cache
        each is decoded once instead of once per thread.
        """
        import openslide

        if self._cache is None:
            self._cache = openslide.OpenSlideCache(SHARED_CACHE_BYTES)
            self._handle.set_cache(self._cache)
        twin = super().clone()
        assert isinstance(twin, OpenSlideReader)
        twin._cache = self._cache  # set on the twin's handle when it opens one
        return twin

    def read_associated_image(self, name: str) -> np.ndarray:
        return rgba_to_rgb(np.asarray(self._handle.associated_images[name].convert("RGBA")))

    def _native_compressions(self) -> Collection[int] | None:
        return _NATIVE_COMPRESSIONS if self.vendor in _TIFF_PAGE_VENDORS else ()

    def _native_origin(self, x: int, y: int, level: int) -> tuple[int, int] | None:
        # OpenSlide places the region at x / downsample in pixels of the level and interpolates
        # (cairo, bilinear) when that is not a whole pixel: only whole pixels are a plain copy.
        downsample = self.level_downsamples[level]  # OpenSlide's own values, as floats
        left, top = x / downsample, y / downsample
        if left.is_integer() and top.is_integer():
            return int(left), int(top)
        return None

    def _read_backend(self, x: int, y: int, width: int, height: int, level: int) -> np.ndarray:
        return rgba_to_rgb(np.asarray(self._handle.read_region((x, y), level, (width, height))))
