"""DeepZoom over histoguard's own readers: the pyramid geometry, a bounded pool of open slide
handles, the region read behind every tile, and a bounded cache of encoded tiles.

A DeepZoom pyramid halves the slide from level ``max_level`` (level-0 pixels) down to level 0
(one pixel). A tile of DeepZoom level ``L`` covers ``2 ** (max_level - L)`` level-0 pixels per
tile pixel; it is read from the coarsest slide level at least that fine
(:meth:`SlideReader.best_level_for_downsample`) with :func:`read_padded` and resized down, as the
tiler does. Coarse tiles (a downsample at least twice the thumbnail's) and tiles whose read would
be huge are cut from the slide's thumbnail instead (longest side :data:`THUMBNAIL_PX`, read once
per opening in bounded blocks), so a zoomed-out view never decodes the whole slide per tile.
"""

from __future__ import annotations

import io
import math
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from histoguard.errors import RequestError
from histoguard.slide import SlideReader, open_slide
from histoguard.slide._reader import Thumbnail, resize
from histoguard.slide._tile_reader import read_padded

TileFormat = Literal["jpeg", "webp"]
FORMATS: tuple[TileFormat, ...] = ("jpeg", "webp")

#: Largest region read for one tile, in pixels of the slide level read; beyond it the tile is
#: cut from the thumbnail.
MAX_READ_PIXELS = 4096 * 4096
#: Longest side of the thumbnail coarse tiles are cut from, in pixels.
THUMBNAIL_PX = 2048


@dataclass(frozen=True)
class DeepZoomGeometry:
    """The DeepZoom pyramid of a ``width`` x ``height`` (level-0 pixels) slide."""

    width: int
    height: int
    tile_size: int
    overlap: int

    @property
    def max_level(self) -> int:
        """The full-resolution level: ``ceil(log2(max(width, height)))``."""
        return max(0, math.ceil(math.log2(max(self.width, self.height, 1))))

    def downsample(self, level: int) -> float:
        """Level-0 pixels per pixel of DeepZoom ``level``."""
        return float(2 ** (self.max_level - level))

    def level_size(self, level: int) -> tuple[int, int]:
        """``(width, height)`` of DeepZoom ``level`` in pixels."""
        ds = self.downsample(level)
        return max(1, math.ceil(self.width / ds)), max(1, math.ceil(self.height / ds))

    def tile_counts(self, level: int) -> tuple[int, int]:
        """``(columns, rows)`` of tiles at DeepZoom ``level``."""
        w, h = self.level_size(level)
        return math.ceil(w / self.tile_size), math.ceil(h / self.tile_size)

    def tile_box(self, level: int, col: int, row: int) -> tuple[int, int, int, int]:
        """``(x, y, width, height)`` of a tile in pixels of DeepZoom ``level``, overlap included.

        Raises:
            RequestError: 404 for a level, column or row outside the pyramid.
        """
        if not 0 <= level <= self.max_level:
            raise RequestError(404, f"level {level} is not in 0..{self.max_level}")
        cols, rows = self.tile_counts(level)
        if not (0 <= col < cols and 0 <= row < rows):
            raise RequestError(404, f"tile {col}_{row} is not in level {level} ({cols}x{rows})")
        w, h = self.level_size(level)
        x0 = col * self.tile_size - (self.overlap if col else 0)
        y0 = row * self.tile_size - (self.overlap if row else 0)
        x1 = min(w, (col + 1) * self.tile_size + self.overlap)
        y1 = min(h, (row + 1) * self.tile_size + self.overlap)
        return x0, y0, x1 - x0, y1 - y0

    def dzi(self, fmt: str) -> str:
        """The ``.dzi`` descriptor (XML) OpenSeadragon opens."""
        return (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            '<Image xmlns="http://schemas.microsoft.com/deepzoom/2008" '
            f'Format="{fmt}" Overlap="{self.overlap}" TileSize="{self.tile_size}">'
            f'<Size Width="{self.width}" Height="{self.height}"/></Image>\n'
        )


@dataclass
class _Handles:
    """The open readers of one slide: ``free`` ones, ``busy`` count, and its thumbnail."""

    readers: list[SlideReader]
    free: list[SlideReader]
    busy: int = 0
    thumbnail: Thumbnail | None = None
    thumbnail_lock: threading.Lock = field(default_factory=threading.Lock)


class SlidePool:
    """Open slides, bounded: at most ``per_slide`` handles on one slide (each used by one thread
    at a time) and ``max_open`` slides open, the least recently used closed first.

    Args:
        paths: slide id -> file.
        max_open: slides kept open at once (a slide in use is never closed; the pool may then
            hold more for a moment).
        per_slide: handles per slide; a thread asking for more waits for a free one.
    """

    def __init__(self, paths: Mapping[str, Path], *, max_open: int, per_slide: int) -> None:
        self._paths = dict(paths)
        self._max_open = max_open
        self._per_slide = per_slide
        self._open: OrderedDict[str, _Handles] = OrderedDict()
        self._geometry: dict[str, tuple[tuple[int, int], ...]] = {}
        self._cond = threading.Condition()

    def path(self, slide_id: str) -> Path:
        """The slide's file. Raises RequestError (404) for an unknown id."""
        if slide_id not in self._paths:
            raise RequestError(404, f"no slide {slide_id!r}")
        return self._paths[slide_id]

    @contextmanager
    def reader(self, slide_id: str) -> Iterator[SlideReader]:
        """One handle on the slide, for this thread alone until the block ends.

        Raises:
            RequestError: 404 for an unknown id.
            SlideError: the slide cannot be opened.
        """
        path = self.path(slide_id)
        with self._cond:
            entry = self._open.get(slide_id)
            if entry is None:
                first = open_slide(path, require_mpp=False)
                entry = _Handles([first], [first])
                self._open[slide_id] = entry
                self._geometry[slide_id] = first.level_dimensions
            while not entry.free and len(entry.readers) >= self._per_slide:
                self._cond.wait()
            if entry.free:
                handle = entry.free.pop()
            else:
                handle = entry.readers[0].clone()  # OpenSlide clones share the decoded cache
                entry.readers.append(handle)
            entry.busy += 1
            self._open.move_to_end(slide_id)
            self._evict()
        try:
            yield handle
        finally:
            with self._cond:
                entry.busy -= 1
                entry.free.append(handle)
                self._cond.notify_all()
                self._evict()

    def thumbnail(self, slide_id: str) -> Thumbnail:
        """The slide's thumbnail (longest side :data:`THUMBNAIL_PX`), read once per opening."""
        with self.reader(slide_id) as slide:
            entry = self._open[slide_id]
            with entry.thumbnail_lock:
                if entry.thumbnail is None:
                    entry.thumbnail = slide.get_thumbnail(THUMBNAIL_PX)
                return entry.thumbnail

    def dimensions(self, slide_id: str) -> tuple[int, int]:
        """``(width, height)`` of level 0, opening the slide once if needed."""
        if slide_id not in self._geometry:
            with self.reader(slide_id):
                pass
        return self._geometry[slide_id][0]

    def open_count(self) -> int:
        """Slides open now."""
        with self._cond:
            return len(self._open)

    def _evict(self) -> None:
        """Close least recently used idle slides while more than ``max_open`` are open."""
        for slide_id in list(self._open):
            if len(self._open) <= self._max_open:
                return
            entry = self._open[slide_id]
            if entry.busy == 0:
                for handle in entry.readers:
                    handle.close()
                del self._open[slide_id]

    def close(self) -> None:
        """Close every handle."""
        with self._cond:
            for entry in self._open.values():
                for handle in entry.readers:
                    handle.close()
            self._open.clear()


class TileCache:
    """Encoded tiles, least recently used dropped first once ``max_bytes`` is exceeded."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[object, ...], bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple[object, ...]) -> bytes | None:
        """The cached bytes, or None."""
        with self._lock:
            data = self._items.get(key)
            if data is None:
                self.misses += 1
                return None
            self.hits += 1
            self._items.move_to_end(key)
            return data

    def put(self, key: tuple[object, ...], data: bytes) -> None:
        """Keep ``data`` (unless it alone is larger than the cache)."""
        if len(data) > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            self._bytes += len(data) - (len(old) if old is not None else 0)
            self._items[key] = data
            while self._bytes > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= len(dropped)

    def size_bytes(self) -> int:
        """Bytes held now."""
        with self._lock:
            return self._bytes


def read_view(
    pool: SlidePool, slide_id: str, box0: tuple[float, float, float, float], size: tuple[int, int]
) -> np.ndarray:
    """The pixels of a level-0 box, resized to ``size``: what every DeepZoom tile shows.

    Args:
        pool: the open slides.
        slide_id: which slide.
        box0: ``(x, y, width, height)`` in level-0 pixels.
        size: ``(width, height)`` of the output in pixels.

    Returns:
        ``(height, width, 3)`` uint8 RGB; white beyond the slide.

    Raises:
        RequestError: 404 for an unknown slide.
        SlideError: the slide cannot be opened or the region cannot be decoded.
    """
    x0, y0, w0, h0 = box0
    out_w, out_h = size
    downsample = w0 / out_w
    # The thumbnail is at least twice as fine as such a view: cut it from there, read once.
    coarse = downsample >= 2 * max(pool.dimensions(slide_id)) / THUMBNAIL_PX
    with pool.reader(slide_id) as slide:
        level = slide.best_level_for_downsample(downsample)
        level_ds = slide.level_downsamples[level]
        read_w, read_h = max(1, math.ceil(w0 / level_ds)), max(1, math.ceil(h0 / level_ds))
        if not coarse and read_w * read_h <= MAX_READ_PIXELS:
            region = read_padded(slide, round(x0), round(y0), read_w, read_h, level)
            return resize(region, out_w, out_h)
    thumb = pool.thumbnail(slide_id)
    t = thumb.downsample
    left, top = round(x0 / t), round(y0 / t)
    right, bottom = max(left + 1, round((x0 + w0) / t)), max(top + 1, round((y0 + h0) / t))
    crop = np.full((bottom - top, right - left, 3), 255, dtype=np.uint8)
    part = thumb.image[top:bottom, left:right]
    crop[: part.shape[0], : part.shape[1]] = part
    return resize(crop, out_w, out_h)


def encode(pixels: np.ndarray, fmt: TileFormat, quality: int) -> bytes:
    """``(H, W, 3)`` uint8 RGB as JPEG or WebP bytes."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt.upper(), quality=quality)
    return buffer.getvalue()
