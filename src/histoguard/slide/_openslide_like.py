"""What the OpenSlide and tiffslide back-ends share: tiffslide mirrors OpenSlide's API, and both
read plain tiled TIFF levels through :class:`~histoguard.slide._tiff_tiles.TiffTiles`."""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Collection, Mapping
from typing import Any, ClassVar

import numpy as np

from histoguard.errors import NotNative
from histoguard.slide._reader import SlideReader
from histoguard.slide._tiff_tiles import TiffTiles

#: Serialises the one-time search for a slide's tiled pages (clones made from several threads).
_TILES_LOCK = threading.Lock()


def positive_float(value: object) -> float | None:
    """``value`` as a positive, finite float, or None when absent, unparsable, not positive or
    not finite (``inf``, ``nan``: metadata, not a measurement)."""
    if value is None or value == "":
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if number > 0 and math.isfinite(number) else None


#: Plausible scanning objective magnifications; outside this range (``0``, ``-1``, ``1e9``) the
#: metadata's value is treated as unknown, as a missing one is.
PLAUSIBLE_MAGNIFICATION_RANGE: tuple[float, float] = (1.0, 200.0)


def plausible_magnification(value: object) -> float | None:
    """``value`` as an objective magnification inside :data:`PLAUSIBLE_MAGNIFICATION_RANGE`,
    or None when absent, unparsable or implausible."""
    number = positive_float(value)
    low, high = PLAUSIBLE_MAGNIFICATION_RANGE
    return number if number is not None and low <= number <= high else None


class OpenSlideLikeReader(SlideReader):
    """Metadata of a handle with OpenSlide's interface, whose standard keys use ``_prefix``.

    The library handle opens with the reader; a clone (one per decoding thread) opens its own
    only when it first needs the library, so clones that only cut tiles cost a file descriptor.
    """

    #: Namespace of the standard property keys (``"openslide"`` -> ``openslide.mpp-x``).
    _prefix: ClassVar[str]
    _lib: Any = None
    _levels: tuple[tuple[tuple[int, int], ...], tuple[float, ...]] | None = None

    #: Read plain tiled TIFF levels by decoding their tiles directly (same pixels as the
    #: back-end's own read, which the tests check); False reads every region through the
    #: back-end library, e.g. to compare the two.
    native_tiles: bool = True
    _tiles: TiffTiles | None = None
    _tiles_searched: bool = False
    _fd: int | None = None

    # --- what each back-end provides ------------------------------------------------------

    def _open_library(self) -> Any:
        """Open the library's handle; raise a :class:`SlideError` subclass on failure."""
        raise NotImplementedError

    def _open(self) -> None:
        self._lib = self._open_library()

    @property
    def _handle(self) -> Any:
        if self._lib is None:
            self._lib = self._open_library()
        return self._lib

    def _native_compressions(self) -> Collection[int] | None:
        """TIFF compressions whose direct decoding equals this back-end's (None: any)."""
        return None

    def _native_origin(self, x: int, y: int, level: int) -> tuple[int, int] | None:
        """Where the back-end's read of level-0 ``(x, y)`` starts in whole pixels of ``level``,
        or None when it does not start on a whole pixel (the back-end interpolates)."""
        raise NotImplementedError

    def _read_backend(self, x: int, y: int, width: int, height: int, level: int) -> np.ndarray:
        """The region read through the back-end library."""
        raise NotImplementedError

    # --- the shared read ------------------------------------------------------------------

    def _read(self, x: int, y: int, width: int, height: int, level: int) -> np.ndarray:
        tiles = self._native() if self.native_tiles else None
        origin = None
        if tiles is not None and tiles.has_level(level):
            origin = self._native_origin(x, y, level)
        if tiles is not None and origin is not None:
            if self._fd is None:
                self._fd = tiles.open_fd()
            try:
                return tiles.read(self._fd, level, origin[0], origin[1], width, height)
            except NotNative:
                pass  # a missing or damaged tile: the back-end reads it (or raises) as before
        return self._read_backend(x, y, width, height, level)

    def _native(self) -> TiffTiles | None:
        """This slide's tiled TIFF levels, searched once and shared with clones."""
        if not self._tiles_searched:
            with _TILES_LOCK:
                if not self._tiles_searched:
                    accepted = self._native_compressions()
                    if accepted is None or accepted:
                        self._tiles = TiffTiles.open(
                            self.path, self.level_dimensions, compressions=accepted
                        )
                    self._tiles_searched = True
        return self._tiles

    def clone(self) -> SlideReader:
        """A reader of the same slide for another thread: its own file descriptor and (opened
        when first needed) library handle; this one's decoded TIFF tiles and levels, shared."""
        tiles = self._native() if self.native_tiles else None
        twin = object.__new__(type(self))
        twin.path, twin.mpp_override, twin._is_open = self.path, self.mpp_override, True
        twin._levels = (self.level_dimensions, self.level_downsamples)
        twin.native_tiles = self.native_tiles
        if self.native_tiles:
            twin._tiles, twin._tiles_searched = tiles, True
        return twin

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._lib is not None:
            self._lib.close()
            self._lib = None

    def _standard(self, key: str) -> Any:
        return self._handle.properties.get(f"{self._prefix}.{key}")

    def _level_geometry(self) -> tuple[tuple[tuple[int, int], ...], tuple[float, ...]]:
        if self._levels is None:  # fixed for the file: kept, and handed to clones
            dimensions = tuple((int(w), int(h)) for w, h in self._handle.level_dimensions)
            downsamples = tuple(float(ds) for ds in self._handle.level_downsamples)
            self._levels = (dimensions, downsamples)
        return self._levels

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return self._level_geometry()[0]

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return self._level_geometry()[1]

    @property
    def properties(self) -> Mapping[str, str]:
        return {key: str(value) for key, value in self._handle.properties.items()}

    @property
    def metadata_mpp(self) -> float | None:
        values = [positive_float(self._standard(key)) for key in ("mpp-x", "mpp-y")]
        known = [v for v in values if v is not None]
        return sum(known) / len(known) if known else None

    @property
    def objective_power(self) -> float | None:
        return plausible_magnification(self._standard("objective-power"))

    @property
    def vendor(self) -> str | None:
        vendor = self._standard("vendor")
        return str(vendor) if vendor else None

    @property
    def associated_image_names(self) -> tuple[str, ...]:
        return tuple(self._handle.associated_images.keys())
