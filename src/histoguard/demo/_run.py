"""``histoguard demo``: the whole current pipeline, offline, on real data when it is given.

Today the pipeline is slide -> tissue -> tiles -> features -> a MIL model trained from slide
labels, with calibration, conformal sets and an out-of-distribution gate fitted on held-out
calibration slides -> predictions that say whether they can be trusted, with attention
heatmaps, and beside it the robustness audit of an encoder on a simulated two-center cohort;
later stages append themselves here.

The demo shows both sides of trust: two held-out in-distribution pseudo-slides (originals no
training or calibration slide used) are predicted together with the demo slide, so the summary
can show a decided prediction next to the demo slide's, which for the real CMU-1 skin sample
under the lung model should be refused as out of distribution; the summary says which
happened.

The real data is a folder the caller names (``--data DIR``, laid out as the project's shared
data: ``wsi/``, ``tiles/lc25000_lung/``, ``stain_refs/``); nothing here looks for it on its own,
so what the demo ran on is always what its caller chose, and :meth:`DemoResult.summary` says it.
"""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from histoguard._tile_slides import tile_slides
from histoguard.core._atomic import atomic_output
from histoguard.core._batch import BatchReport
from histoguard.demo._audit import ComparisonOutputs, run_demo_audit, run_demo_harmonization
from histoguard.demo._pseudo_slides import (
    CALIBRATION_SLIDES,
    LABELS,
    N_SLIDES,
    build_pseudo_slides,
)
from histoguard.demo._summary import summary_lines
from histoguard.errors import ConfigError
from histoguard.features import ExtractionConfig, extract_features
from histoguard.features._extract import feature_path
from histoguard.mil import SlidePrediction, TrainConfig, predict, train
from histoguard.report import write_prediction_heatmaps, write_report
from histoguard.robustness import AuditOutputs
from histoguard.slide import Ellipse, TilingConfig, write_synthetic_slide
from histoguard.slide._tile_job import output_paths

#: The encoder the demo uses: built in, deterministic, no weights to fetch.
DEMO_ENCODER = "hg-handcrafted"

#: The real slide the demo prefers, inside the data folder.
REAL_DEMO_SLIDE = Path("wsi") / "CMU-1-Small-Region.svs"
#: What the demo uses from a data folder; a folder holding none of it is a mistake.
DATA_CONTENTS = (REAL_DEMO_SLIDE, Path("tiles") / "lc25000_lung" / "labels.csv", Path("stain_refs"))


@dataclass(frozen=True)
class DemoResult:
    """What the demo ran on and where its outputs are.

    Attributes:
        source: where the demo slides came from: the caller's ``slides``, the data folder's
            real CMU-1 sample, or a generated pyramidal TIFF.
        data: the real-data folder the caller gave, or None (everything else generated).
        training_source: the tiles of the training pseudo-slides: real LC25000 lung tiles
            or generated ones.
        training_report: the cross-validation metrics report (:func:`histoguard.mil.train`).
        fold_sizes: per fold ``(name, n_train, n_val, n_test)`` pseudo-slides: fitted on,
            early-stopped on, held out (the three disjoint).
        calibration: label -> pseudo-slides of that label held out of every fold to fit
            calibration, conformal sets and the gate.
        predictions: the held-out pseudo-slides' predictions first, then the demo slides'.
        held_out: held-out pseudo-slide name -> its true label (not in the cohort; their
            originals are in no training or calibration slide).
        report_page: the model's validation report (``report/report.html``, with
            ``model_card.json`` beside it).
    """

    source: Literal["given", "real", "generated"]
    data: Path | None
    slides: tuple[Path, ...]
    out_dir: Path
    report: BatchReport
    features_report: BatchReport
    training_source: Literal["real", "generated"]
    training_report: dict[str, Any]
    fold_sizes: tuple[tuple[str, int, int, int], ...]
    predictions: tuple[SlidePrediction, ...]
    audit: AuditOutputs
    harmonization: ComparisonOutputs | None = None
    report_page: Path | None = None
    heatmaps: dict[str, dict[str, Path]] = field(default_factory=dict)
    calibration: dict[str, int] = field(default_factory=dict)
    held_out: dict[str, str] = field(default_factory=dict)

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
            heatmaps = self.heatmaps.get(slide.stem, {})
            outputs[slide.stem] |= {f"heatmap {kind}": path for kind, path in heatmaps.items()}
        return outputs

    def summary(self) -> list[str]:
        """What the demo ran on, trained and measured, one printable line each: the data
        source of every stage, the task and its classes, the pseudo-slides trained on, held
        out and calibrated on, every metric with its confidence interval and how the interval
        was computed, the trust readings (calibration, coverage, gate false alarms), each
        prediction's decision and what it means, and why the numbers look as they do."""
        return summary_lines(self)


def check_data_folder(data: str | Path | None) -> Path | None:
    """The real-data folder ``data`` as a path, after checking it is one the demo can use.

    Raises:
        ConfigError: ``data`` is not a folder, or holds none of :data:`DATA_CONTENTS`.
    """
    if data is None:
        return None
    root = Path(data)
    if not root.is_dir():
        raise ConfigError(
            f"{root}: no such data folder; pass --data the folder holding wsi/, tiles/ and "
            "stain_refs/ (the project's shared data), or leave --data out to run on generated data"
        )
    if not any((root / part).exists() for part in DATA_CONTENTS):
        wanted = ", ".join(str(part) for part in DATA_CONTENTS)
        raise ConfigError(
            f"{root}: holds none of what the demo uses ({wanted}); pass --data the project's "
            "shared data folder, or leave --data out to run on generated data"
        )
    return root


def find_real_slide(data: Path | None) -> Path | None:
    """The data folder's real demo slide (OpenSlide's CMU-1 sample), if it holds it."""
    if data is None or not (data / REAL_DEMO_SLIDE).is_file():
        return None
    return data / REAL_DEMO_SLIDE


def run_demo(
    out_dir: str | Path = "histoguard-demo",
    *,
    data: str | Path | None = None,
    slides: Sequence[str | Path] = (),
    progress: bool = False,
) -> DemoResult:
    """Run the pipeline end to end: tissue detection and tiling at 0.5 µm/px, 224 px tiles;
    features from the built-in hand-crafted encoder (colour in optical-density/HED space and
    texture; no weights, no training); an ABMIL model trained from slide labels (tumour vs
    normal) on 80 pseudo-slides (real LC25000 lung tiles from ``data``, else generated tiles):
    20 held out of every fold as calibration slides (temperature scaling, class-wise conformal
    sets at alpha 0.1, out-of-distribution gate at 0.05), the rest validated by
    patient-grouped 3-fold cross-validation; predictions, with decision (the class, or
    ``review`` and why) and attention heatmaps, for two held-out in-distribution pseudo-slides
    and the demo slide, which show the mechanics, not a diagnosis. Beside it, the robustness
    audit of the built-in CNN ``hg-cnn`` on a simulated two-center cohort of the same kind of
    tiles (``audit/audit.json`` + ``.html``).

    Args:
        out_dir: where everything is written (``tiles/`` holds the per-slide outputs).
        data: the real-data folder (laid out as the project's shared data: ``wsi/``,
            ``tiles/lc25000_lung/``, ``stain_refs/``); None runs every stage on generated data.
        slides: slides to use; by default the real CMU-1 sample from ``data``, or, without
            it, a generated pyramidal TIFF written to ``out_dir``.
        progress: draw progress bars.

    Returns:
        A :class:`DemoResult` naming the sources and the outputs; ``summary()`` says it in words.

    Raises:
        ConfigError: ``data`` is not a usable data folder.
    """
    root = check_data_folder(data)
    out = Path(out_dir)
    source: Literal["given", "real", "generated"]
    if slides:
        source, chosen = "given", tuple(Path(s) for s in slides)
    elif (real := find_real_slide(root)) is not None:
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
    tiled = [r.slide for r in report.results if r.status in ("done", "skipped")]
    extraction = ExtractionConfig(
        encoder=DEMO_ENCODER, tiling=tiling, tiles_dir=out / "tiles", readers=0
    )
    features = extract_features(tiled, out / "features", extraction, progress=progress)

    # Rebuilt on every run: a rerun with other data must not reuse the other tiles' features
    # (nor the model: its splits.json is reused on reruns and would not fit another cohort).
    shutil.rmtree(out / "training", ignore_errors=True)
    shutil.rmtree(out / "model", ignore_errors=True)
    pseudo = build_pseudo_slides(out / "training", root)
    bag_config = ExtractionConfig(encoder=DEMO_ENCODER, tiling=tiling, readers=0)
    extract_features(pseudo.slides, out / "training" / "features", bag_config, progress=False)
    held_out_slides = [slide for slide, _ in pseudo.held_out]
    held_out_features = out / "training" / "held_out_features"
    held_out_report = extract_features(
        held_out_slides, held_out_features, bag_config, progress=False
    )
    training = train(
        TrainConfig(
            cohort=pseudo.cohort,
            features=out / "training" / "features",
            out=out / "model",
            model="abmil",
            k=3,
            epochs=25,
            lr=1e-3,
            n_boot=200,
            calibration_fraction=CALIBRATION_SLIDES / N_SLIDES,
        )
    )
    splits = json.loads((out / "model" / "splits.json").read_text())["splits"]
    fold_sizes = tuple((s["name"], len(s["train"]), len(s["val"]), len(s["test"])) for s in splits)
    label_of = {
        row["slide_id"]: row["label"]
        for row in csv.DictReader(pseudo.cohort.read_text().splitlines())
    }
    calibration = Counter(label_of[s] for s in splits[0].get("calibration", ())) if splits else {}
    done = [r.output for r in features.results if r.output is not None]
    held_out_files = [r.output for r in held_out_report.results if r.output is not None]
    predictions = predict(out / "model", [*held_out_files, *done], out / "predictions")
    demo_predictions = predictions[len(held_out_files) :]
    heatmaps = write_prediction_heatmaps(demo_predictions, out / "predictions").paths
    audit = run_demo_audit(out / "audit", root, progress=progress)
    harmonization = run_demo_harmonization(out / "audit", root)
    _, report_page = write_report(out / "model", out / "report", audit_dir=out / "audit")
    return DemoResult(
        source=source,
        data=root,
        slides=chosen,
        out_dir=out,
        report=report,
        features_report=features,
        training_source=pseudo.source,
        training_report=training.report,
        fold_sizes=fold_sizes,
        predictions=tuple(predictions),
        audit=audit,
        harmonization=harmonization,
        report_page=report_page,
        heatmaps=heatmaps,
        calibration={label: calibration.get(label, 0) for label in LABELS},
        held_out={slide.name: label for slide, label in pseudo.held_out},
    )
