"""``histoguard demo``: the whole current pipeline, offline, on a real slide when one is at hand.

Today the pipeline is slide -> tissue -> tiles -> features; later stages append themselves here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from histoguard._atomic import atomic_output
from histoguard._batch import BatchReport
from histoguard.features import ExtractionConfig, extract_features
from histoguard.features._extract import feature_path
from histoguard.slide import Ellipse, TilingConfig, tile_slides, write_synthetic_slide
from histoguard.slide._tile_job import output_paths

#: The encoder the demo uses: built in, deterministic, no weights to fetch.
DEMO_ENCODER = "hg-handcrafted"

#: The real slide the demo prefers, inside the shared data folder.
REAL_DEMO_SLIDE = Path("wsi") / "CMU-1-Small-Region.svs"


@dataclass(frozen=True)
class DemoResult:
    """What the demo ran on and where its outputs are."""

    source: Literal["given", "real", "generated"]
    slides: tuple[Path, ...]
    out_dir: Path
    report: BatchReport
    features_report: BatchReport

    def outputs(self) -> dict[str, dict[str, Path]]:
        """Per slide stem: paths of ``tiles`` (h5), ``thumbnail``, ``geojson``, ``features``."""
        outputs = {}
        for slide in self.slides:
            paths = output_paths(self.out_dir / "tiles", slide)
            outputs[slide.stem] = {
                "tiles": paths["h5"],
                "thumbnail": paths["thumbnail"],
                "geojson": paths["geojson"],
                "features": feature_path(self.out_dir / "features", slide),
            }
        return outputs


def find_real_slide() -> Path | None:
    """The shared data's real demo slide: $HISTOGUARD_TEST_DATA, else ./../shared/data."""
    roots = [os.environ.get("HISTOGUARD_TEST_DATA"), str(Path.cwd().parent / "shared" / "data")]
    for root in filter(None, roots):
        candidate = Path(root) / REAL_DEMO_SLIDE
        if candidate.is_file():
            return candidate
    return None


def run_demo(
    out_dir: str | Path = "histoguard-demo",
    *,
    slides: Sequence[str | Path] = (),
    show_progress: bool = True,
) -> DemoResult:
    """Run the pipeline end to end: tissue detection and tiling at 0.5 µm/px, 224 px tiles,
    then features from the built-in hand-crafted encoder (colour in optical-density/HED space and
    texture; it needs no weights and no training).

    Args:
        out_dir: where everything is written (``tiles/`` holds the per-slide outputs).
        slides: slides to use; by default the real CMU-1 sample from the shared data, or, when
            that is absent, a generated pyramidal TIFF written to ``out_dir``.
        show_progress: draw progress bars.

    Returns:
        A :class:`DemoResult` naming the source and the outputs.
    """
    out = Path(out_dir)
    source: Literal["given", "real", "generated"]
    if slides:
        source, chosen = "given", tuple(Path(s) for s in slides)
    elif (real := find_real_slide()) is not None:
        source, chosen = "real", (real,)
    else:
        source = "generated"
        out.mkdir(parents=True, exist_ok=True)
        generated = out / "generated-slide.tiff"
        if not generated.is_file():
            shapes = (
                Ellipse(cx=2000, cy=2300, rx=1500, ry=1700),
                Ellipse(cx=4700, cy=2000, rx=1000, ry=1100),
            )
            with atomic_output(generated) as tmp:
                write_synthetic_slide(tmp, width=6144, height=4608, mpp=0.25, shapes=shapes)
        chosen = (generated,)
    tiling = TilingConfig()
    report = tile_slides(chosen, out / "tiles", tiling, show_progress=show_progress)
    tiled = [r.slide for r in report.results if r.status != "failed"]
    extraction = ExtractionConfig(
        encoder=DEMO_ENCODER, tiling=tiling, tiles_dir=out / "tiles", readers=0
    )
    features = extract_features(tiled, out / "features", extraction, show_progress=show_progress)
    return DemoResult(
        source=source, slides=chosen, out_dir=out, report=report, features_report=features
    )
