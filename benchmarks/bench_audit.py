"""Robustness index speed: seconds for the full PathoROB design on 1,024-d embeddings, against
scikit-learn's exact brute-force cosine kNN on the same data, in the same run.

    python benchmarks/bench_audit.py [--sizes 20000 100000] [--dim 1024] [--max-k 100]
                                     [--baseline-queries 10000]

The data are planted embeddings (2 classes x 2 centers, 50 tiles per slide, class, center and
slide strength 0.05 each: in 1,024 dimensions the noise distances concentrate, so 0.05 already
gives a kNN balanced accuracy of ~0.75 and an RI near 0.5). Cases per size:

- ``neighbours``: :func:`nearest_neighbours` alone, ``max_k`` neighbours, own slide excluded;
- ``RI, k=10``: :func:`robustness_index` with a fixed k (neighbour search, RI(k) curve, kNN
  table, 1,000 slide-bootstrap resamples, paired design);
- ``RI, k chosen``: the same with k chosen by kNN balanced accuracy.

Baseline: ``NearestNeighbors(algorithm="brute", metric="cosine").kneighbors`` for ``max_k``
neighbours, which neither excludes slides nor breaks ties deterministically, so it does less
work. For sizes above ``--baseline-queries`` it is timed on that many queries (against all N
rows) and scaled linearly to N queries; the table marks such rows. ``ratio`` is baseline
seconds / histoguard seconds (above 1: histoguard is faster).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable

import numpy as np
import sklearn
import torch
from sklearn.neighbors import NearestNeighbors

from histoguard.robustness.data._synthetic import planted_embeddings
from histoguard.robustness.metrics._neighbours import nearest_neighbours
from histoguard.robustness.metrics._robustness_index import RobustnessIndexConfig, robustness_index

TILES_PER_SLIDE = 50


def seconds(run: Callable[[], object]) -> float:
    """Wall-clock seconds of one call."""
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def baseline_seconds(x: np.ndarray, max_k: int, queries: int) -> tuple[float, bool]:
    """scikit-learn brute-force cosine kNN for all rows; (seconds, whether extrapolated)."""
    index = NearestNeighbors(n_neighbors=max_k, algorithm="brute", metric="cosine")
    measured = seconds(lambda: index.fit(x).kneighbors(x[: min(queries, len(x))]))
    return measured * len(x) / min(queries, len(x)), queries < len(x)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 100_000])
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--max-k", type=int, default=100)
    parser.add_argument("--baseline-queries", type=int, default=10_000)
    args = parser.parse_args()
    print(
        f"planted embeddings x {args.dim}, max_k {args.max_k}; {platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"scikit-learn {sklearn.__version__}"
    )
    print(f"{'N':>8} {'case':<14} {'seconds':>9} {'sklearn s':>10} {'ratio':>6}  RI")
    for n in args.sizes:
        slides = max(1, n // (4 * TILES_PER_SLIDE))
        data = planted_embeddings(
            slides_per_cell=slides,
            tiles_per_slide=TILES_PER_SLIDE,
            dim=args.dim,
            class_strength=0.05,
            center_strength=0.05,
            slide_strength=0.05,
        )
        baseline, scaled = baseline_seconds(data.embeddings, args.max_k, args.baseline_queries)
        mark = "*" if scaled else " "
        search = seconds(
            lambda d=data: nearest_neighbours(d.embeddings, args.max_k, groups=d.slide_id)
        )
        print(
            f"{len(data):>8} {'neighbours':<14} {search:>9.1f} {baseline:>9.1f}{mark} "
            f"{baseline / search:>6.2f}"
        )
        for case, k in (("RI, k=10", 10), ("RI, k chosen", None)):
            config = RobustnessIndexConfig(k=k, max_k=args.max_k)
            started = time.perf_counter()
            result = robustness_index(data, config)
            took = time.perf_counter() - started
            print(
                f"{len(data):>8} {case:<14} {took:>9.1f} {baseline:>9.1f}{mark} "
                f"{baseline / took:>6.2f}  {result.value:.3f} at k={result.k}"
            )
    print("* sklearn timed on --baseline-queries queries and scaled linearly to all N")


if __name__ == "__main__":
    main()
