"""MIL training speed: seconds per epoch and peak memory for ABMIL and TransMIL.

1,000 bags of 2,000 x 512 random float32 features (4 GB, held in memory like the training
loop's bag cache), two classes, one bag per optimiser step (AdamW), as `histoguard train` does.

    python benchmarks/bench_mil.py [--bags 1000] [--instances 2000] [--models abmil transmil]

Each model is measured in its own process so peak memory (max RSS) is its own.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import torch


def one_epoch(model_name: str, bags: int, instances: int, dim: int) -> dict[str, float]:
    """Train one epoch; return seconds per epoch and peak resident memory (MiB)."""
    from histoguard.mil import build_model

    torch.manual_seed(0)
    features = torch.randn(bags, instances, dim)
    labels = torch.randint(0, 2, (bags,))
    mask = torch.ones(1, instances, dtype=torch.bool)
    model = build_model(model_name, in_dim=dim, n_classes=2)
    optimiser = torch.optim.AdamW(model.parameters(), lr=2e-4)
    model.train()
    started = time.perf_counter()
    for i in range(bags):
        output = model(features[i : i + 1], mask)
        loss = model.compute_loss(output, labels[i : i + 1])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    seconds = time.perf_counter() - started
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    params = sum(p.numel() for p in model.parameters())
    return {"seconds_per_epoch": seconds, "peak_mib": peak_mib, "parameters": params}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bags", type=int, default=1000)
    parser.add_argument("--instances", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--models", nargs="+", default=["abmil", "transmil"])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_epoch(args.child, args.bags, args.instances, args.dim)))
        return
    print(
        f"{args.bags} bags x {args.instances} x {args.dim} float32; {platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads)"
    )
    print(f"{'model':<10} {'parameters':>11} {'s/epoch':>9} {'peak RSS MiB':>13}")
    for name in args.models:
        cmd = [sys.executable, __file__, "--child", name, "--bags", str(args.bags),
               "--instances", str(args.instances), "--dim", str(args.dim)]  # fmt: skip
        result = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
        print(
            f"{name:<10} {result['parameters']:>11,} "
            f"{result['seconds_per_epoch']:>9.1f} {result['peak_mib']:>13.0f}"
        )


if __name__ == "__main__":
    main()
