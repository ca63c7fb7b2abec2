"""Tile-reading throughput: histoguard against a naive loop of OpenSlide reads, in the same run.

The naive loop is what many pipelines do: one ``read_region`` per tile at level 0 (the full
level-0 footprint), converted to RGB and resized to the tile size. histoguard reads the same
tiles (same level-0 coordinates, same output size) at the best pyramid level, in bands where
the level grid allows, with parallel decoding threads.

    python benchmarks/bench_tiling.py [--slide PATH] [--mpp-override 0.25] [--repeats 3]

Prints one row per case with tiles/s and the ratio to the naive loop.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import openslide
from PIL import Image

from _shared_data import TCGA_SLIDE
from histoguard import TileSpec
from histoguard.slide import detect_tissue, open_slide, read_tiles, tile_grid


def naive_loop(path: Path, spec: TileSpec, coords: np.ndarray) -> None:
    """One OpenSlide read per tile at level 0, then RGB conversion and resize."""
    slide = openslide.OpenSlide(str(path))
    size0 = spec.level0_tile_size
    for x, y in coords:
        tile = slide.read_region((int(x), int(y)), 0, (size0, size0)).convert("RGB")
        np.asarray(tile.resize((spec.tile_size, spec.tile_size), Image.Resampling.BILINEAR))
    slide.close()


def histoguard_reads(
    path: Path, spec: TileSpec, coords: np.ndarray, mpp_override: float | None, threads: int
) -> None:
    """histoguard's tile reader: best level, bands, ``threads`` decoding threads."""
    with open_slide(path, mpp_override=mpp_override, backend="openslide") as slide:
        for read in read_tiles(slide, spec, coords, threads=threads):
            assert read.tile is not None


def timed(function: Callable[[], None], repeats: int) -> float:
    """Median wall time of ``repeats`` runs, seconds."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--slide", type=Path, default=TCGA_SLIDE)
    parser.add_argument("--mpp-override", type=float, default=0.25)
    parser.add_argument("--tile-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    print(
        f"slide: {args.slide.name}; machine: {platform.machine()}, {os.cpu_count()} CPUs; "
        f"python {platform.python_version()}; openslide {openslide.__library_version__}"
    )
    print(
        f"{'case':<44} {'tiles':>6} {'naive tiles/s':>14} {'histoguard tiles/s':>19} {'ratio':>6}"
    )
    with open_slide(args.slide, mpp_override=args.mpp_override) as slide:
        thumbnail = slide.get_thumbnail(2048)
        tissue = detect_tissue(thumbnail.image, downsample=thumbnail.downsample, mpp=slide.mpp)
        for mpp in (args.mpp_override * 2, args.mpp_override):
            spec = TileSpec.for_slide(
                slide_mpp=slide.mpp,
                level_downsamples=slide.level_downsamples,
                mpp=mpp,
                tile_size=args.tile_size,
            )
            grid = tile_grid(slide.dimensions, spec)
            coords = grid[tissue.tile_fractions(grid, spec.level0_tile_size) >= 0.5]
            naive = timed(partial(naive_loop, args.slide, spec, coords), args.repeats)
            for threads in (1, 2):
                ours = timed(
                    partial(histoguard_reads, args.slide, spec, coords, args.mpp_override, threads),
                    args.repeats,
                )
                case = f"{mpp} µm/px, {args.tile_size}px (level {spec.level}), {threads} thread(s)"
                print(
                    f"{case:<44} {len(coords):>6} {len(coords) / naive:>14.1f} "
                    f"{len(coords) / ours:>19.1f} {naive / ours:>6.2f}"
                )


if __name__ == "__main__":
    main()
