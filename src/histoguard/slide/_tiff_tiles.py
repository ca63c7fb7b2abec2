"""Reading a TIFF pyramid's own tiles: each source tile decoded once, regions cut from them.

A region read through OpenSlide or tiffslide decodes every source tile it touches, composites
them (OpenSlide: through cairo, as RGBA) and converts the result; neighbouring reads decode the
same tiles again unless a cache catches them. Where a level is a plain tiled TIFF page (SVS,
generic tiled TIFF, OME-TIFF) and the region starts on a whole pixel of that level, the same
pixels are the source tiles' decoded pixels, cut and pasted. :class:`TiffTiles` does exactly
that: it reads the compressed tile bytes with ``os.pread`` (no shared file position, so threads
need no lock), decodes them with tifffile's own decoder (imagecodecs: libjpeg-turbo, OpenJPEG -
the decoders the back-ends use), keeps the decoded tiles in a small cache shared by a reader and
its clones, and lets a thread that needs a tile another thread is decoding wait for it instead
of decoding it twice.

Anything off that plain path (a missing tile, a tile that fails to decode, an unusual tile
shape) raises :class:`NotNative`; the back-end then reads the region itself, so errors and odd
files behave exactly as before. Which levels and compressions are taken this way is decided by
the back-end (``_openslide_backend`` / ``_tiffslide_backend``): only where it gives the
back-end's own pixels, which the tests check on real and generated slides.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from histoguard.errors import NotNative

#: Decoded tiles kept per slide (shared by a reader and its clones), in bytes: about 340 tiles of
#: 256 x 256 RGB, enough for the rows of source tiles a banded tile read walks through.
CACHE_BYTES = 64 * 1024 * 1024

#: TIFF compression codes: JPEG, and Aperio's JPEG2000 (YCbCr 33003, RGB 33005).
JPEG, APERIO_JP2K_YCBCR, APERIO_JP2K_RGB = 7, 33003, 33005


@dataclass(frozen=True)
class _Level:
    """One pyramid level stored as a tiled TIFF page."""

    width: int
    height: int
    tile_width: int
    tile_height: int
    columns: int
    offsets: np.ndarray
    counts: np.ndarray
    decode: Callable[..., Any]
    jpegtables: bytes | None
    compression: int


def _level_of(page: Any) -> _Level | None:
    """The page as a :class:`_Level`, or None unless it is tiled 8-bit RGB, one plane."""
    if not (
        page.is_tiled
        and page.samplesperpixel == 3
        and page.bitspersample == 8
        and page.planarconfig == 1
        and page.imagedepth == 1
        and page.dtype == np.uint8
    ):
        return None
    tile_height, tile_width = int(page.tilelength), int(page.tilewidth)
    return _Level(
        width=int(page.imagewidth),
        height=int(page.imagelength),
        tile_width=tile_width,
        tile_height=tile_height,
        columns=-(-int(page.imagewidth) // tile_width),
        offsets=np.asarray(page.dataoffsets, dtype=np.int64),
        counts=np.asarray(page.databytecounts, dtype=np.int64),
        decode=page.decode,
        jpegtables=page.jpegtables,
        compression=int(page.compression),
    )


class TiffTiles:
    """The tiled levels of one TIFF file and a shared cache of their decoded tiles.

    Build it with :meth:`open`; each reader then reads through its own file descriptor
    (:meth:`open_fd`), and clones share one :class:`TiffTiles`, so a tile decoded by one thread
    serves them all.

    Args:
        path: the slide file.
        levels: per pyramid level of the back-end, its tiled page, or None where the level is
            not a plain tiled page (read by the back-end).
        cache_bytes: most bytes of decoded tiles kept.
    """

    def __init__(
        self, path: Path, levels: Sequence[_Level | None], *, cache_bytes: int = CACHE_BYTES
    ) -> None:
        self.path = path
        self.levels = tuple(levels)
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._cached_bytes = 0
        self._pending: dict[tuple[int, int], Future[np.ndarray]] = {}
        self._lock = threading.Lock()
        #: Tiles decoded so far (a cache miss each); for tests and benchmarks.
        self.decoded = 0

    @classmethod
    def open(
        cls,
        path: Path,
        level_dimensions: Sequence[tuple[int, int]],
        *,
        compressions: Collection[int] | None = None,
    ) -> TiffTiles | None:
        """Find each level's tiled page in a TIFF file.

        Args:
            path: the slide file.
            level_dimensions: the back-end's ``(width, height)`` of every level.
            compressions: TIFF compression codes accepted (None: any tifffile decodes).

        Returns:
            A :class:`TiffTiles`, or None when tifffile cannot parse the file or no level is a
            plain tiled page (exactly one page of that size, 8-bit RGB, accepted compression).
        """
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                pages = [_level_of(page) for page in tif.pages]
        except Exception:  # tifffile raises many types on files it cannot parse
            return None
        levels: list[_Level | None] = []
        for width, height in level_dimensions:
            same = [p for p in pages if p is not None and (p.width, p.height) == (width, height)]
            ok = len(same) == 1 and (compressions is None or same[0].compression in compressions)
            levels.append(same[0] if ok else None)
        if all(level is None for level in levels):
            return None
        return cls(path, levels)

    def has_level(self, level: int) -> bool:
        """Whether ``level`` is read here (else by the back-end)."""
        return 0 <= level < len(self.levels) and self.levels[level] is not None

    def open_fd(self) -> int:
        """A read-only file descriptor on the slide for one reader; close it with ``os.close``."""
        return os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))

    def read(self, fd: int, level: int, left: int, top: int, width: int, height: int) -> np.ndarray:
        """Pixels ``[top, top + height) x [left, left + width)`` of ``level``, white beyond it.

        Args:
            fd: a descriptor from :meth:`open_fd`.
            level: a level for which :meth:`has_level` holds.
            left, top: the region's corner in pixels of ``level`` (may lie outside the level).
            width, height: the region's size in pixels of ``level``.

        Returns:
            ``(height, width, 3)`` uint8 RGB; 255 wherever the region lies outside the level.

        Raises:
            NotNative: a tile the region needs is missing or cannot be decoded here.
        """
        info = self.levels[level]
        if info is None:
            raise NotNative(f"level {level} is not a plain tiled page")
        region = np.full((height, width, 3), 255, dtype=np.uint8)
        x0, x1 = max(left, 0), min(left + width, info.width)
        y0, y1 = max(top, 0), min(top + height, info.height)
        if x1 <= x0 or y1 <= y0:
            return region
        tw, th = info.tile_width, info.tile_height
        for row in range(y0 // th, (y1 - 1) // th + 1):
            for col in range(x0 // tw, (x1 - 1) // tw + 1):
                tile = self._tile(fd, level, row * info.columns + col)
                # The part of this tile inside both the region and the level.
                ty0, ty1 = max(y0, row * th), min(y1, (row + 1) * th)
                tx0, tx1 = max(x0, col * tw), min(x1, (col + 1) * tw)
                region[ty0 - top : ty1 - top, tx0 - left : tx1 - left] = tile[
                    ty0 - row * th : ty1 - row * th, tx0 - col * tw : tx1 - col * tw
                ]
        return region

    def _tile(self, fd: int, level: int, index: int) -> np.ndarray:
        """Tile ``index`` of ``level`` decoded, from the cache or decoded here exactly once."""
        key = (level, index)
        with self._lock:
            tile = self._cache.get(key)
            if tile is not None:
                self._cache.move_to_end(key)
                return tile
            pending = self._pending.get(key)
            owner = pending is None
            if pending is None:
                pending = self._pending[key] = Future()
        if not owner:
            return pending.result()  # another thread is decoding it: wait, don't decode twice
        try:
            tile = self._decode(fd, level, index)
        except BaseException as error:
            with self._lock:
                del self._pending[key]
            pending.set_exception(error)
            raise
        with self._lock:
            del self._pending[key]
            self._cache[key] = tile
            self._cached_bytes += tile.nbytes
            self.decoded += 1
            while self._cached_bytes > self.cache_bytes and len(self._cache) > 1:
                _, dropped = self._cache.popitem(last=False)
                self._cached_bytes -= dropped.nbytes
        pending.set_result(tile)
        return tile

    def _decode(self, fd: int, level: int, index: int) -> np.ndarray:
        info = self.levels[level]
        assert info is not None
        if index >= len(info.offsets) or info.counts[index] <= 0:
            raise NotNative(f"tile {index} of level {level} is missing")
        data = os.pread(fd, int(info.counts[index]), int(info.offsets[index]))
        try:
            pixels, _, _ = info.decode(data, index, jpegtables=info.jpegtables)
        except Exception as error:  # a damaged tile: let the back-end raise its own error
            raise NotNative(f"tile {index} of level {level} does not decode ({error})") from error
        shape = (1, info.tile_height, info.tile_width, 3)
        if pixels is None or pixels.shape != shape or pixels.dtype != np.uint8:
            raise NotNative(f"tile {index} of level {level} decodes to an unexpected shape")
        tile: np.ndarray = pixels[0]
        return tile
