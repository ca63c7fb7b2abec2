"""How fast bad inputs are rejected: preflight and a tiling batch that meets them.

A batch must give up on a missing, empty, truncated or non-slide file at once and go on with
the next slide; preflight of a valid file reads its header only. The test suite checks that
each case ends in the right error; this script measures how long each takes (the target: under
a second per file, under 30 s for the whole batch).

    python benchmarks/bench_preflight.py [--repeats 5]

Prints one row per file: what preflight said and its median time in milliseconds, then the
seconds per slide of a ``tile_slides`` batch over the bad files and one good generated slide.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from _shared_data import SHARED_DATA
from histoguard import TilingConfig, tile_slides
from histoguard.errors import SlideError
from histoguard.slide import Rectangle, write_synthetic_slide
from histoguard.slide._preflight import preflight

REAL = [
    "CMU-1-Small-Region.svs",
    "tcga-cr-7395-01a-01-ts1.svs",
    "broken/truncated.svs",
    "openslide-fixtures/small.svs",
    "openslide-fixtures/boxes.tiff",
    "openslide-fixtures/boxes_0.dcm",
    "openslide-fixtures/unopenable.tiff",
    "openslide-fixtures/unreadable.svs",
]


def generated_inputs(folder: Path) -> list[Path]:
    """A missing, an empty and a text file named like slides, and a TIFF cut in half."""
    empty, text = folder / "empty.svs", folder / "text.svs"
    empty.write_bytes(b"")
    text.write_text("this is a text file, not a slide\n")
    tissue = [Rectangle(x0=0, y0=0, x1=1024, y1=1024)]
    whole = write_synthetic_slide(
        folder / "whole.tiff", width=2048, height=2048, mpp=0.5, shapes=tissue
    )
    truncated = folder / "truncated.tiff"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    return [folder / "missing.svs", empty, text, truncated]


def time_preflight(path: Path, repeats: int) -> tuple[str, float]:
    """What preflight said (file kind or error class) and its median time in ms."""
    times, said = [], ""
    for _ in range(repeats):
        started = time.perf_counter()
        try:
            said = preflight(path).kind.name
        except SlideError as error:
            said = type(error).__name__
        times.append(time.perf_counter() - started)
    return said, 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"{platform.machine()}, {os.cpu_count()} CPUs; median of {args.repeats} runs")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files = generated_inputs(folder)
        files += [p for name in REAL if (p := SHARED_DATA / "wsi" / name).is_file()]
        print(f"{'file':<40} {'preflight says':<24} {'ms':>8}")
        for path in files:
            said, ms = time_preflight(path, args.repeats)
            print(f"{path.name:<40} {said:<24} {ms:>8.1f}")
        good = folder / "whole.tiff"
        started = time.perf_counter()
        report = tile_slides([*files, good], folder / "out", TilingConfig(), progress=False)
        total = time.perf_counter() - started
        print(f"\ntile_slides over {len(files) + 1} inputs: {total:.1f} s in all")
        print(f"{'slide':<40} {'status':<8} {'s':>8}")
        for result in report.results:
            print(f"{result.slide.name:<40} {result.status:<8} {result.seconds:>8.2f}")


if __name__ == "__main__":
    main()
