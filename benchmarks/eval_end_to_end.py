"""End-to-end training against the frozen encoder with the same MIL head, on LC25000
pseudo-slides (tile- and source-image-disjoint, as the demo builds them).

Per seed: the demo's 80 pseudo-slides (8 tiles each; a tumour slide holds 3 adenocarcinoma
tiles), one patient-grouped fold held out; ``train_end_to_end`` twice on the same split and head,
once with the encoder trained (``--lr-encoder``) and once frozen (learning rate 1e-12: the same
code, batch-norm calibration and tile subsets, with updates 10^8 times smaller). Reported: the
held-out slide AUC of each and the paired difference, over seeds.

Usage::

    python benchmarks/eval_end_to_end.py [--encoder hg-cnn] [--seeds 3] [--epochs 10]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import stats

from _shared_data import SHARED_DATA
from histoguard.demo._pseudo_slides import build_pseudo_slides
from histoguard.mil import EndToEndConfig, train_end_to_end

FROZEN_LR = 1e-12


def held_out_auc(report: dict[str, object]) -> float:
    """The held-out split's slide AUC from a metrics report."""
    overall = report["overall"]
    return float(overall["metrics"]["auc"]["value"])  # type: ignore[index]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="hg-cnn")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr-encoder", type=float, default=1e-4)
    args = parser.parse_args()
    print(f"# eval_end_to_end — {time.strftime('%Y-%m-%d')}, {platform.node()}, "
          f"{platform.machine()}; command: {' '.join(sys.argv)}")  # fmt: skip
    print("| seed | frozen AUC | end-to-end AUC | difference | seconds (frozen, end-to-end) |")
    print("|---|---|---|---|---|")
    differences = []
    for seed in range(args.seeds):
        with tempfile.TemporaryDirectory() as tmp:
            pseudo = build_pseudo_slides(Path(tmp) / "pseudo", SHARED_DATA, seed=seed)
            if pseudo.source != "real":
                raise SystemExit(f"no LC25000 tiles under {SHARED_DATA}; set HISTOGUARD_TEST_DATA")
            aucs, seconds = [], []
            for lr in (FROZEN_LR, args.lr_encoder):
                started = time.perf_counter()
                config = EndToEndConfig(
                    cohort=pseudo.cohort, tiles=Path(tmp) / "pseudo" / "slides",
                    out=Path(tmp) / f"run-{lr}", encoder=args.encoder, model="abmil",
                    epochs=args.epochs, lr_encoder=lr, seed=seed, n_boot=200,
                )  # fmt: skip
                result = train_end_to_end(config)
                seconds.append(time.perf_counter() - started)
                aucs.append(held_out_auc(result.report))
        differences.append(aucs[1] - aucs[0])
        print(f"| {seed} | {aucs[0]:.3f} | {aucs[1]:.3f} | {aucs[1] - aucs[0]:+.3f} | "
              f"{seconds[0]:.0f}, {seconds[1]:.0f} |")  # fmt: skip
        sys.stdout.flush()
    d = np.asarray(differences)
    if d.size > 1:
        half = stats.t.ppf(0.975, d.size - 1) * d.std(ddof=1) / np.sqrt(d.size)
        print(f"\nmean difference {d.mean():+.3f}, 95 % t-interval "
              f"[{d.mean() - half:+.3f}, {d.mean() + half:+.3f}] over {d.size} seeds")  # fmt: skip


if __name__ == "__main__":
    main()
