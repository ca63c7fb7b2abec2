"""Macenko normalisation of 224² tiles against torchstain 1.4.1 (numpy and torch), one thread.

Real tiles: EBHI-Seg (224×224, China) and LC25000 lung (224×224, USA) from the shared data, the
torchstain target as the reference. Each round times, in turn, every tool on the same tiles:
torchstain's numpy and torch normalisers one tile at a time (they take one image per call; the
torch one a ``(3, H, W)`` uint8 tensor, converted before timing), and histoguard's
``macenko-torchstain`` (the same computation as torchstain's) and default ``macenko`` modes,
one tile per call and the whole batch in one call. The table gives medians over the rounds in
milliseconds per tile, wall clock and CPU time of this process (on a shared machine the CPU time
is the steadier of the two), and their ratios to torchstain-torch; and it checks the outputs:
mean absolute difference from torchstain-numpy on the 0-255 scale.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_stain.py [--tiles 128] [--rounds 7]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from datetime import date

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from torchstain.numpy.normalizers.macenko import NumpyMacenkoNormalizer
from torchstain.torch.normalizers.macenko import TorchMacenkoNormalizer

from _shared_data import SHARED_DATA
from histoguard.core._image import decode_image
from histoguard.stain import MacenkoNormalizer, fit_torchstain_macenko

TILE = 224


def real_tiles(count: int) -> np.ndarray:
    """``(count, 224, 224, 3)`` uint8: EBHI-Seg and LC25000 tiles, alternating, evenly spread."""
    ebhi = sorted((SHARED_DATA / "tiles" / "ebhi_seg" / "images").rglob("*.jpg"))
    lung = sorted((SHARED_DATA / "tiles" / "lc25000_lung").rglob("*.jpeg"))
    half = (count + 1) // 2
    pairs = zip(ebhi[:: len(ebhi) // half][:half], lung[:: len(lung) // half][:half], strict=True)
    paths = [path for pair in pairs for path in pair]
    tiles = [decode_image(path) for path in paths[:count]]
    return np.stack([tile[:TILE, :TILE] for tile in tiles])


def median_ms_per_tile(times: list[float], count: int) -> float:
    return statistics.median(times) / count * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiles", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)

    tiles = real_tiles(args.tiles)
    target = decode_image(SHARED_DATA / "stain_refs" / "torchstain_target.png")
    ts_numpy = NumpyMacenkoNormalizer()
    ts_numpy.fit(target)
    ts_torch = TorchMacenkoNormalizer()
    ts_torch.fit(torch.from_numpy(target).permute(2, 0, 1).contiguous())
    chw = [torch.from_numpy(tile).permute(2, 0, 1).contiguous() for tile in tiles]
    compatible, default = fit_torchstain_macenko(target), MacenkoNormalizer.fit(target)

    def per_tile(normalizer: MacenkoNormalizer) -> Callable[[], object]:
        return lambda: [normalizer.transform(tile) for tile in tiles]

    tools: dict[str, Callable[[], object]] = {
        "torchstain-numpy, per tile": lambda: [ts_numpy.normalize(x, stains=False) for x in tiles],
        "torchstain-torch, per tile": lambda: [ts_torch.normalize(x, stains=False) for x in chw],
        "histoguard macenko-torchstain, per tile": per_tile(compatible),
        "histoguard macenko-torchstain, batched": lambda: compatible.transform(tiles),
        "histoguard macenko, per tile": per_tile(default),
        "histoguard macenko, batched": lambda: default.transform(tiles),
    }
    times: dict[str, list[float]] = {name: [] for name in tools}
    cpu: dict[str, list[float]] = {name: [] for name in tools}
    with threadpool_limits(1):
        for tool in tools.values():  # warm-up
            tool()
        for _ in range(args.rounds):
            for name, tool in tools.items():
                started, started_cpu = time.perf_counter(), time.process_time()
                tool()
                times[name].append(time.perf_counter() - started)
                cpu[name].append(time.process_time() - started_cpu)

    reference = np.stack([ts_numpy.normalize(t, stains=False)[0] for t in tiles]).astype(float)
    difference = {
        "macenko-torchstain": float(np.abs(compatible.transform(tiles) - reference).mean()),
        "macenko": float(np.abs(default.transform(tiles) - reference).mean()),
    }
    peer = median_ms_per_tile(times["torchstain-torch, per tile"], len(tiles))
    peer_cpu = median_ms_per_tile(cpu["torchstain-torch, per tile"], len(tiles))
    print(
        f"{date.today()}  {platform.processor() or platform.machine()}  torch {torch.__version__}"
        f"  {len(tiles)} tiles of {TILE}²  {args.rounds} rounds  1 thread"
    )
    print(f"{'tool':42s} {'wall ms/tile':>12s} {'ratio':>6s} {'CPU ms/tile':>12s} {'ratio':>6s}")
    for name in tools:
        ms = median_ms_per_tile(times[name], len(tiles))
        ms_cpu = median_ms_per_tile(cpu[name], len(tiles))
        print(f"{name:42s} {ms:12.2f} {peer / ms:5.2f}x {ms_cpu:12.2f} {peer_cpu / ms_cpu:5.2f}x")
    print("ratio: torchstain-torch's time / the tool's (higher is faster)")
    for mode, value in difference.items():
        print(f"mean |histoguard {mode} - torchstain-numpy| = {value:.2f}/255")


if __name__ == "__main__":
    main()
