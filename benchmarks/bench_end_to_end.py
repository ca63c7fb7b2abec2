"""End-to-end training on one large bag: peak RSS and seconds per step, by bag size.

Each bag size runs in its own process (peak RSS is per process): synthetic 224x224 JPEG tiles in
a tile folder, the registered encoder (``hg-d4`` by default) with BN calibration on 64 tiles,
an ABMIL head, and ``--steps`` end-to-end steps (:func:`histoguard.mil._end_to_end_step.train_step`:
all tiles encoded without gradient, ``--tiles-with-grad`` re-encoded with gradient,
checkpointed micro-batches). One step per slide is one epoch, so seconds per step of a
10,000-tile bag are seconds per epoch per 10,000-tile slide.

    PYTHONPATH=src python benchmarks/bench_end_to_end.py --sizes 1000 10000 --steps 2
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def _write_tiles(folder: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:224, 0:224]
    for i in range(n):
        fx, fy, phase = [*rng.uniform(0.02, 0.2, 2).tolist(), rng.uniform(0, 6.3)]
        wave = np.sin(fx * xx + fy * yy + phase)[..., None]
        base = np.array([200, 120, 180]) + 40 * wave * np.array([1, -1, 0.5])
        tile = np.clip(base + rng.normal(0, 10, (224, 224, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(tile).save(folder / f"t{i:05d}.jpg", quality=90)


def _child(folder: Path, encoder_name: str, steps: int, tiles_with_grad: int, threads: int) -> None:
    import torch

    from histoguard.encoders import load_encoder
    from histoguard.mil import build_model
    from histoguard.mil._end_to_end_step import (
        BagEncoder,
        StepSettings,
        calibrate_batchnorm,
        train_step,
    )
    from histoguard.slide import TileFolder

    torch.set_num_threads(threads)
    tiles = TileFolder.open(folder)
    encoder = load_encoder(encoder_name)
    bag_encoder = BagEncoder(encoder, StepSettings(tiles_with_grad=tiles_with_grad))
    calibrate_batchnorm(bag_encoder, [(tiles, list(range(min(64, len(tiles)))))])
    model = build_model("abmil", in_dim=encoder.embed_dim, n_classes=2)
    optimiser = torch.optim.AdamW(
        [{"params": list(encoder.module.parameters()), "lr": 1e-4},
         {"params": list(model.parameters()), "lr": 2e-4}]
    )  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    seconds = []
    for step in range(steps):
        started = time.perf_counter()
        train_step(bag_encoder, model, tiles, step % 2, optimiser=optimiser, generator=generator)
        seconds.append(time.perf_counter() - started)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"tiles": len(tiles), "seconds_per_step": seconds, "peak_rss_mib": peak_mib}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--encoder", default="hg-d4")
    parser.add_argument("--tiles-with-grad", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        _child(args.child, args.encoder, args.steps, args.tiles_with_grad, args.threads)
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            folder = Path(tmp) / f"bag{size}"
            _write_tiles(folder, size)
            command = [sys.executable, __file__, "--child", str(folder), "--steps", str(args.steps),
                       "--encoder", args.encoder, "--tiles-with-grad", str(args.tiles_with_grad),
                       "--threads", str(args.threads)]  # fmt: skip
            done = subprocess.run(command, check=True, capture_output=True, text=True)
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"encoder {args.encoder}, tiles_with_grad {args.tiles_with_grad}, "
          f"{args.threads} threads, checkpointed micro-batches of 8")  # fmt: skip
    print(f"{'tiles':>7} {'peak RSS MiB':>13} {'s/step (each)':>24}")
    for row in rows:
        each = ", ".join(f"{s:.1f}" for s in row["seconds_per_step"])
        print(f"{row['tiles']:>7} {row['peak_rss_mib']:>13.0f} {each:>24}")


if __name__ == "__main__":
    main()
