"""CPU time of ``import histoguard`` and of each room's import, in fresh interpreters.

Each import runs ``--runs`` times, each in a new ``python -c`` process, and the process times
only the import statement (``time.process_time``, so interpreter start-up is left out and other
processes on a shared machine do not count). The table gives the median per room, and which
of the heavy libraries (torch, scipy, scikit-learn, ...) the import loaded.

Usage::

    python benchmarks/bench_imports.py [--runs 7]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from datetime import date

ROOMS = (
    "histoguard",
    "histoguard.errors",
    "histoguard.core",
    "histoguard.slide",
    "histoguard.stain",
    "histoguard.augment",
    "histoguard.encoders",
    "histoguard.features",
    "histoguard.harmonize",
    "histoguard.uncertainty",
    "histoguard.mil",
    "histoguard.robustness",
    "histoguard.report",
    "histoguard.serve",
    "histoguard.testing",
    "histoguard.demo",
    "histoguard.cli",
)
HEAVY = ("torch", "scipy", "sklearn", "skimage", "matplotlib", "pandas", "dask", "transformers")

_CHILD = """
import json, sys, time
started = time.process_time()
import {room}
seconds = time.process_time() - started
print(json.dumps([seconds, [name for name in {heavy!r} if name in sys.modules]]))
"""


def import_cpu_seconds(room: str) -> tuple[float, list[str]]:
    """CPU seconds of ``import room`` in a fresh interpreter, and the heavy libraries loaded."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-c", _CHILD.format(room=room, heavy=HEAVY)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    seconds, loaded = json.loads(run.stdout.strip().splitlines()[-1])
    return float(seconds), list(loaded)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    print(f"{date.today()}  python {sys.version.split()[0]}  {args.runs} fresh processes each")
    print(f"{'import':24s} {'CPU s (median)':>14s}  heavy libraries loaded")
    # torch alone: the floor of every room that defines torch modules at import.
    for room in (*ROOMS, "torch"):
        measured = [import_cpu_seconds(room) for _ in range(args.runs)]
        median = statistics.median(seconds for seconds, _ in measured)
        print(f"{room:24s} {median:14.2f}  {', '.join(measured[-1][1]) or '-'}")


if __name__ == "__main__":
    main()
