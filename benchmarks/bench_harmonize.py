"""histoguard's ComBat against the reference neuroCombat on the same matrices, interleaved.

For each size: fit + transform of the training matrix (neuroCombat's one call), parametric and
non-parametric, with the class as a categorical covariate; best of ``--repeats`` runs each,
alternating the two tools. Also checks that both give the same matrix (max abs difference).

Usage::

    python benchmarks/bench_harmonize.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import platform
import time
import warnings

import numpy as np
import pandas as pd
from neuroCombat import neuroCombat

from histoguard.harmonize import Harmonizer, design_from_labels

SIZES = ((1_000, 256), (5_000, 512), (20_000, 1_024))


def planted(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n, d) features of three centers with per-center shifts and scales, and a class."""
    rng = np.random.default_rng(seed)
    centers = rng.integers(0, 3, n)
    labels = rng.integers(0, 2, n)
    x = rng.normal(size=(n, d)) * (1 + 0.5 * centers[:, None]) + centers[:, None] + labels[:, None]
    return x, centers.astype(str), labels.astype(str)


def ours(x: np.ndarray, centers: np.ndarray, labels: np.ndarray, parametric: bool) -> np.ndarray:
    design = design_from_labels(labels)
    return Harmonizer(method="combat", parametric=parametric).fit_transform(x, centers, design)


def reference(
    x: np.ndarray, centers: np.ndarray, labels: np.ndarray, parametric: bool
) -> np.ndarray:
    covars = pd.DataFrame({"batch": centers, "label": labels})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = neuroCombat(
            dat=x.T, covars=covars, batch_col="batch", categorical_cols=["label"],
            parametric=parametric,
        )  # fmt: skip
    return np.asarray(out["data"]).T


def seconds(tool: object, *args: object) -> float:
    """Wall time of one call of ``tool(*args)``."""
    started = time.perf_counter()
    tool(*args)  # type: ignore[operator]
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"# bench_harmonize — {time.strftime('%Y-%m-%d')}, {platform.node()}, "
          f"{platform.machine()}, numpy {np.__version__}")  # fmt: skip
    print("| rows × features | empirical Bayes | neuroCombat (s) | histoguard (s) | "
          "histoguard ÷ neuroCombat | max abs difference |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for n, d in SIZES:
        x, centers, labels = planted(n, d)
        for parametric in (True, False):
            if not parametric and n > 5_000:
                continue  # neuroCombat's non-parametric step is quadratic in the features
            a = ours(x, centers, labels, parametric)
            b = reference(x, centers, labels, parametric)
            t_ref, t_ours = [], []
            for _ in range(args.repeats):  # interleaved
                t_ref.append(seconds(reference, x, centers, labels, parametric))
                t_ours.append(seconds(ours, x, centers, labels, parametric))
            kind = "parametric" if parametric else "non-parametric"
            nan = np.isnan(b)
            difference = (
                f"— (neuroCombat's output is {nan.mean():.0%} NaN: its likelihood product "
                "underflows)"
                if nan.any()
                else f"{np.abs(a - b).max():.1e}"
            )
            print(
                f"| {n:,} × {d:,} | {kind} | {min(t_ref):.3f} | {min(t_ours):.3f} | "
                f"{min(t_ours) / min(t_ref):.2f} | {difference} |"
            )


if __name__ == "__main__":
    main()
