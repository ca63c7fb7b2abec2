"""Reading many tiles fast: right level, larger reads cut into tiles, parallel decoding.

Decoding (JPEG, JPEG2000) dominates tile reading, and OpenSlide, tiffslide and Pillow release the
GIL while decoding, so a few threads - each with its own handle - scale with the cores. Where the
level's pixel grid lines up with the tiles (level 0, or integer downsamples), neighbouring tiles of
a row are read as one region and cut, so each source tile is decoded once. Where it does not (a
level with downsample 2.0005), OpenSlide places regions with sub-pixel interpolation, so a larger
read cut into pieces would not equal a per-tile read: such tiles are read one by one.
On plain tiled TIFF levels the back-ends cut regions from directly decoded source tiles
(:mod:`histoguard.slide._tiff_tiles`), whose cache the clones share: there each source tile is
decoded once whichever thread or band needs it.

Partial tiles at the right and bottom edges (``edge="pad"``) read past the slide. Back-ends
differ there - OpenSlide returns transparent pixels, tiffslide black ones, others may return a
smaller array - so every region is padded here explicitly: white (255, the glass colour) beyond
the level's extent, and the requested shape always.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

import numpy as np

from histoguard.errors import RegionReadError
from histoguard.slide._reader import SlideReader, resize
from histoguard.slide._tiling import TileSpec

#: Longest region read in one call, in pixels of the level read.
MAX_BAND_PX = 2048

#: Value of the pixels beyond the slide's edge: white, the colour of empty glass.
PAD_VALUE = 255


@dataclass(frozen=True)
class TileRead:
    """One tile's outcome: ``tile`` is ``(tile_size, tile_size, 3)`` uint8, or None on error."""

    index: int
    tile: np.ndarray | None
    error: RegionReadError | None


def _aligned(spec: TileSpec, coords: np.ndarray) -> bool:
    downsample = spec.level_downsample
    if abs(downsample - round(downsample)) > 1e-9:
        return False
    return bool(np.all(coords % round(downsample) == 0))


def plan_bands(coords: np.ndarray, spec: TileSpec) -> list[np.ndarray]:
    """Group tile indices into runs that can be read as one region.

    Args:
        coords: ``(N, 2)`` int64 level-0 top-left corners.
        spec: the tile plan.

    Returns:
        Lists of indices into ``coords``; each run shares a row, its tiles touch or overlap, and
        it spans at most :data:`MAX_BAND_PX` at the read level. Unaligned grids give runs of one.
    """
    if len(coords) == 0:
        return []
    order = np.lexsort((coords[:, 0], coords[:, 1]))
    if not _aligned(spec, coords):
        return [order[i : i + 1] for i in range(len(order))]
    max_span0 = MAX_BAND_PX * spec.level_downsample
    bands: list[np.ndarray] = []
    start = 0
    for i in range(1, len(order) + 1):
        if i < len(order):
            prev, cur = coords[order[i - 1]], coords[order[i]]
            same_row = cur[1] == prev[1] and cur[0] - prev[0] <= spec.level0_tile_size
            fits = cur[0] + spec.level0_tile_size - coords[order[start], 0] <= max_span0
            if same_row and fits:
                continue
        bands.append(order[start:i])
        start = i
    return bands


def read_padded(
    reader: SlideReader, x: int, y: int, width: int, height: int, level: int
) -> np.ndarray:
    """``reader.read_region`` with everything beyond the slide's edge set to white.

    Args:
        reader: an open slide.
        x, y: top-left corner in level-0 pixels.
        width, height: region size in pixels of ``level``.
        level: the pyramid level read.

    Returns:
        ``(height, width, 3)`` uint8 RGB, :data:`PAD_VALUE` wherever the region lies outside the
        level's extent, whatever the back-end returned there.

    Raises:
        RegionReadError: the back-end failed to decode the region.
    """
    region = np.asarray(reader.read_region(x, y, width, height, level))
    level_w, level_h = reader.level_dimensions[level]
    downsample = reader.level_downsamples[level]
    # Pixels of the region that lie on the level: columns before level_w - x / downsample.
    inside_w = min(width, max(0, math.ceil(level_w - x / downsample)))
    inside_h = min(height, max(0, math.ceil(level_h - y / downsample)))
    if region.shape[:2] == (height, width) and (inside_w, inside_h) == (width, height):
        return region
    padded = np.full((height, width, 3), PAD_VALUE, dtype=np.uint8)
    keep_h, keep_w = min(inside_h, region.shape[0]), min(inside_w, region.shape[1])
    padded[:keep_h, :keep_w] = region[:keep_h, :keep_w, :3]
    return padded


def _read_band(
    reader: SlideReader, spec: TileSpec, coords: np.ndarray, band: np.ndarray
) -> list[TileRead]:
    ds = spec.level_downsample
    x_first, y = (int(v) for v in coords[band[0]])
    if len(band) > 1:
        span = round((int(coords[band[-1], 0]) - x_first) / ds) + spec.read_size
        try:
            region = read_padded(reader, x_first, y, span, spec.read_size, spec.level)
        except RegionReadError:
            pass  # fall through to one read per tile, so only the bad tiles are lost
        else:
            reads = []
            for index in band:
                left = round((int(coords[index, 0]) - x_first) / ds)
                piece = region[:, left : left + spec.read_size]
                reads.append(
                    TileRead(int(index), resize(piece, spec.tile_size, spec.tile_size), None)
                )
            return reads
    reads = []
    for index in band:
        x, y = (int(v) for v in coords[index])
        try:
            piece = read_padded(reader, x, y, spec.read_size, spec.read_size, spec.level)
        except RegionReadError as error:
            reads.append(TileRead(int(index), None, error))
        else:
            reads.append(TileRead(int(index), resize(piece, spec.tile_size, spec.tile_size), None))
    return reads


def read_tiles(
    reader: SlideReader, spec: TileSpec, coords: np.ndarray, *, threads: int = 2
) -> Iterator[TileRead]:
    """Read every tile in ``coords``, in parallel, yielding each as it is ready.

    Args:
        reader: an open slide; each worker thread reads through its own clone of it.
        spec: the tile plan (level, read size, output size).
        coords: ``(N, 2)`` int64 level-0 top-left corners.
        threads: decoding threads (1 reads in the calling thread).

    Yields:
        One :class:`TileRead` per tile, in completion order (use ``.index``). A tile that fails to
        decode is yielded with its error, never zero-filled.
    """
    bands = plan_bands(coords, spec)
    if threads <= 1:
        for band in bands:
            yield from _read_band(reader, spec, coords, band)
        return
    local = threading.local()
    clones: list[SlideReader] = []
    lock = threading.Lock()

    def work(band: np.ndarray) -> list[TileRead]:
        own = getattr(local, "reader", None)
        if own is None:
            own = reader.clone()
            local.reader = own
            with lock:
                clones.append(own)
        return _read_band(own, spec, coords, band)

    try:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            pending: set[Future[list[TileRead]]] = set()
            queue = iter(bands)
            # Bounded prefetch: memory stays at a few bands per thread however big the slide.
            for band in queue:
                pending.add(pool.submit(work, band))
                if len(pending) >= 2 * threads:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        yield from future.result()
            for future in pending:
                yield from future.result()
    finally:
        for clone in clones:
            if clone is not reader:
                clone.close()
