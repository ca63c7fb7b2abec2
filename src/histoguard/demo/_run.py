"""``histoguard demo``: the whole current pipeline, offline, on a real slide when one is at hand.

Today the pipeline is slide -> tissue -> tiles -> features -> a MIL model trained from slide
labels -> predictions with attention heatmaps, and beside it the robustness audit of an encoder
on a simulated two-center cohort; later stages append themselves here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from histoguard._tile_slides import tile_slides
from histoguard.core._atomic import atomic_output
from histoguard.core._batch import BatchReport
from histoguard.demo._audit import run_demo_audit
from histoguard.demo._pseudo_slides import build_training_slides
from histoguard.features import ExtractionConfig, extract_features
from histoguard.features._extract import feature_path
from histoguard.mil import SlidePrediction, TrainConfig, predict, train
from histoguard.robustness import AuditOutputs
from histoguard.slide import Ellipse, TilingConfig, write_synthetic_slide
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
    training_source: Literal["real", "generated"]
    training_report: dict[str, Any]
    predictions: tuple[SlidePrediction, ...]
    audit: AuditOutputs

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
                "model": self.out_dir / "model",
                "predictions": self.out_dir / "predictions" / "predictions.csv",
            }
            prediction = next((p for p in self.predictions if p.slide == slide.stem), None)
            if prediction is not None:
                outputs[slide.stem] |= {
                    f"heatmap {kind}": path for kind, path in prediction.heatmaps.items()
                }
        return outputs


def find_shared_data() -> Path | None:
    """The shared real-data folder: $HISTOGUARD_TEST_DATA, else ./../shared/data, if present."""
    roots = [os.environ.get("HISTOGUARD_TEST_DATA"), str(Path.cwd().parent / "shared" / "data")]
    for root in filter(None, roots):
        if (Path(root) / "DATA.md").is_file():
            return Path(root)
    return None


def find_real_slide() -> Path | None:
    """The shared data's real demo slide (OpenSlide's CMU-1 sample), if present."""
    root = find_shared_data()
    if root is None or not (root / REAL_DEMO_SLIDE).is_file():
        return None
    return root / REAL_DEMO_SLIDE


def run_demo(
    out_dir: str | Path = "histoguard-demo",
    *,
    slides: Sequence[str | Path] = (),
    progress: bool = False,
) -> DemoResult:
    """Run the pipeline end to end: tissue detection and tiling at 0.5 µm/px, 224 px tiles;
    features from the built-in hand-crafted encoder (colour in optical-density/HED space and
    texture; no weights, no training); an ABMIL model trained from slide labels on pseudo-slides
    (real LC25000 lung tiles when the shared data is present, else generated tiles), validated
    by patient-grouped 3-fold cross-validation; its prediction and attention heatmaps for the
    demo slide. The model is trained on lung tiles: on the demo slide it shows the mechanics,
    not a diagnosis. Beside it, the robustness audit of the built-in CNN ``hg-cnn`` on a
    simulated two-center cohort of the same kind of tiles (``audit/audit.json`` + ``.html``).

    Args:
        out_dir: where everything is written (``tiles/`` holds the per-slide outputs).
        slides: slides to use; by default the real CMU-1 sample from the shared data, or, when
            that is absent, a generated pyramidal TIFF written to ``out_dir``.
        progress: draw progress bars.

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
    report = tile_slides(chosen, out / "tiles", tiling, progress=progress)
    tiled = [r.slide for r in report.results if r.status != "failed"]
    extraction = ExtractionConfig(
        encoder=DEMO_ENCODER, tiling=tiling, tiles_dir=out / "tiles", readers=0
    )
    features = extract_features(tiled, out / "features", extraction, progress=progress)

    cohort, training_slides, training_source = build_training_slides(
        out / "training", find_shared_data()
    )
    bag_config = ExtractionConfig(encoder=DEMO_ENCODER, tiling=tiling, readers=0)
    extract_features(training_slides, out / "training" / "features", bag_config, progress=False)
    training = train(
        TrainConfig(
            cohort=cohort,
            features=out / "training" / "features",
            out=out / "model",
            model="abmil",
            k=3,
            epochs=25,
            lr=1e-3,
            n_boot=200,
        )
    )
    done = [r.output for r in features.results if r.output is not None]
    predictions = predict(out / "model", done, out / "predictions") if done else []
    audit = run_demo_audit(out / "audit", find_shared_data(), progress=progress)
    return DemoResult(
        source=source,
        slides=chosen,
        out_dir=out,
        report=report,
        features_report=features,
        training_source=training_source,
        training_report=training.report,
        predictions=tuple(predictions),
        audit=audit,
    )
