"""Tile-reading throughput: histoguard against a naive loop of OpenSlide reads and against the
decoder's own limit, in the same run, interleaved.

- naive: what many pipelines do: one OpenSlide ``read_region`` per tile at level 0 (the full
  level-0 footprint), converted to RGB and resized to the tile size (bilinear).
- decode limit: only decoding, once, every source tile (JPEG / JPEG2000, through tifffile's
  decoders, i.e. imagecodecs) that the tiles need at the level histoguard reads, on the same
  number of threads; nothing opened, cut, resized or converted. No reader can beat it.
- histoguard: ``read_tiles`` at the best level (slide opened inside the timing), with the
  direct tile path (the default: source tiles decoded once, cut and pasted) and, for
  comparison, ``native_tiles=False`` (every region through the back-end library, as before).

    python benchmarks/bench_tiling.py [--slide PATH] [--mpp-override 0.25] [--repeats 7]

Prints tiles/s per case, the ratio to the naive loop and the share of the decode limit.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import openslide
from PIL import Image

from _shared_data import TCGA_SLIDE
from histoguard import TileSpec
from histoguard.slide import detect_tissue, open_slide, read_tiles, tile_grid
from histoguard.slide._tiff_tiles import TiffTiles


def naive_loop(path: Path, spec: TileSpec, coords: np.ndarray) -> None:
    """One OpenSlide read per tile at level 0, then RGB conversion and resize."""
    slide = openslide.OpenSlide(str(path))
    size0 = spec.level0_tile_size
    for x, y in coords:
        tile = slide.read_region((int(x), int(y)), 0, (size0, size0)).convert("RGB")
        np.asarray(tile.resize((spec.tile_size, spec.tile_size), Image.Resampling.BILINEAR))
    slide.close()


def needed_tiles(tiles: TiffTiles, spec: TileSpec, coords: np.ndarray) -> list[int]:
    """Indices of the source tiles of ``spec.level`` the tiles touch (inside the level)."""
    info = tiles.levels[spec.level]
    assert info is not None, "the read level is not a tiled TIFF page"
    needed: set[int] = set()
    for x, y in coords:
        left, top = x / spec.level_downsample, y / spec.level_downsample
        right = min(info.width, math.ceil(left + spec.read_size))
        bottom = min(info.height, math.ceil(top + spec.read_size))
        for row in range(int(top) // info.tile_height, (bottom - 1) // info.tile_height + 1):
            for col in range(int(left) // info.tile_width, (right - 1) // info.tile_width + 1):
                needed.add(row * info.columns + col)
    return sorted(needed)


def decode_only(tiles: TiffTiles, level: int, indices: list[int], threads: int) -> None:
    """Read and decode each listed source tile once, on ``threads`` threads."""
    info = tiles.levels[level]
    assert info is not None
    fd = tiles.open_fd()

    def decode(index: int) -> None:
        data = os.pread(fd, int(info.counts[index]), int(info.offsets[index]))
        info.decode(data, index, jpegtables=info.jpegtables)

    try:
        if threads == 1:
            for index in indices:
                decode(index)
        else:
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(decode, indices))
    finally:
        os.close(fd)


def histoguard_reads(
    path: Path,
    spec: TileSpec,
    coords: np.ndarray,
    *,
    mpp_override: float | None,
    threads: int,
    backend: str,
    native: bool,
) -> None:
    """histoguard's tile reader: best level, bands, ``threads`` decoding threads."""
    with open_slide(path, mpp_override=mpp_override, backend=backend) as slide:
        slide.native_tiles = native  # type: ignore[attr-defined]
        for read in read_tiles(slide, spec, coords, threads=threads):
            assert read.tile is not None


def make_cases(
    path: Path,
    spec: TileSpec,
    coords: np.ndarray,
    tiles: TiffTiles,
    sources: list[int],
    mpp_override: float | None,
) -> dict[str, Callable[[], None]]:
    """Every case of one tile plan, by name, in the order they run."""
    cases: dict[str, Callable[[], None]] = {
        "naive OpenSlide loop (level 0, 1 thread)": partial(naive_loop, path, spec, coords)
    }
    for threads in (1, 2):
        cases[f"decode limit, {threads} thread(s)"] = partial(
            decode_only, tiles, spec.level, sources, threads
        )
        for backend, native in (("openslide", False), ("openslide", True), ("tiffslide", True)):
            how = "direct tiles" if native else "library only"
            cases[f"histoguard {backend}, {how}, {threads} thread(s)"] = partial(
                histoguard_reads, path, spec, coords, mpp_override=mpp_override,
                threads=threads, backend=backend, native=native,
            )  # fmt: skip
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--slide", type=Path, default=TCGA_SLIDE)
    parser.add_argument("--mpp-override", type=float, default=None)
    parser.add_argument(
        "--mpps", type=float, nargs="+", default=None,
        help="tile resolutions, µm/px (default: 2x and 1x the slide's)",
    )  # fmt: skip
    parser.add_argument("--tile-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    print(
        f"slide: {args.slide.name}; machine: {platform.machine()}, {os.cpu_count()} CPUs; "
        f"python {platform.python_version()}; openslide {openslide.__library_version__}; "
        f"{time.strftime('%Y-%m-%d')}; medians of {args.repeats} interleaved repeats"
    )
    with open_slide(args.slide, mpp_override=args.mpp_override) as slide:
        thumbnail = slide.get_thumbnail(2048)
        tissue = detect_tissue(thumbnail.image, downsample=thumbnail.downsample, mpp=slide.mpp)
        tiles = TiffTiles.open(args.slide, slide.level_dimensions)
        assert tiles is not None, "not a tiled TIFF slide"
        mpps = args.mpps or [round(slide.mpp * 2, 4), round(slide.mpp, 4)]
        specs = [
            TileSpec.for_slide(
                slide_mpp=slide.mpp,
                level_downsamples=slide.level_downsamples,
                mpp=mpp,
                tile_size=args.tile_size,
            )
            for mpp in mpps
        ]
        dimensions = slide.dimensions
    print(f"{'case':<52} {'tiles':>5} {'src':>4} {'tiles/s':>8} {'x naive':>8} {'of limit':>9}")
    for mpp, spec in zip(mpps, specs, strict=True):
        grid = tile_grid(dimensions, spec)
        coords = grid[tissue.tile_fractions(grid, spec.level0_tile_size) >= 0.5]
        sources = needed_tiles(tiles, spec, coords)
        cases = make_cases(args.slide, spec, coords, tiles, sources, args.mpp_override)
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.repeats):  # interleaved: a drift in the machine's load hits all alike
            for name, run in cases.items():
                started = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - started)
        median = {name: statistics.median(values) for name, values in times.items()}
        naive = median["naive OpenSlide loop (level 0, 1 thread)"]
        print(f"-- {mpp} µm/px, {args.tile_size} px, read at level {spec.level} "
              f"(downsample {spec.level_downsample:.4f}, {spec.read_size} px)")  # fmt: skip
        for name in cases:
            threads = 2 if "2 thread" in name else 1
            limit = median[f"decode limit, {threads} thread(s)"]
            print(
                f"{name:<52} {len(coords):>5} {len(sources):>4} {len(coords) / median[name]:>8.1f} "
                f"{naive / median[name]:>8.2f} {limit / median[name]:>8.0%}"
            )


if __name__ == "__main__":
    main()
