"""Predicting with trained MIL models: one row per slide, plus attention heatmaps."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from histoguard.core._atomic import write_bytes_atomic
from histoguard.features import read_feature_file
from histoguard.mil._train import Bag, load_model, predict_bags

PREDICTIONS_NAME = "predictions.csv"


@dataclass(frozen=True)
class SlidePrediction:
    """One slide's prediction: class probabilities (averaged over the models) and attention."""

    slide: str
    probabilities: dict[str, float]
    predicted: str
    attention: np.ndarray | None
    heatmaps: dict[str, Path]


def model_dirs(model: Path) -> list[Path]:
    """The model folders under ``model``: itself if it holds ``model.json``, else ``fold_*``."""
    if (model / "model.json").is_file():
        return [model]
    folds = sorted(p for p in model.glob("fold_*") if (p / "model.json").is_file())
    if not folds:
        raise FileNotFoundError(
            f"{model}: no model.json here or in fold_* folders; pass a `train` output"
        )
    return folds


def predict(
    model: str | Path,
    feature_files: Sequence[str | Path],
    out_dir: str | Path,
    *,
    heatmaps: bool = True,
    top_k: int = 16,
) -> list[SlidePrediction]:
    """Predict slides from their feature files with a trained model (or the ensemble of folds).

    Writes ``out_dir/predictions.csv`` (slide, predicted label, one probability per class) and,
    for models with attention, per slide ``<stem>.attention.png`` (overlay on the thumbnail when
    the slide can be opened), ``<stem>.top_tiles.png`` and ``<stem>.attention.geojson`` (QuPath
    measurement map).

    Args:
        model: a ``train`` output folder (all folds are averaged) or one ``fold_i`` folder.
        feature_files: per-slide feature files.
        out_dir: where predictions and heatmaps go.
        heatmaps: write attention heatmaps.
        top_k: tiles in the top-tile gallery.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    models = [load_model(d) for d in model_dirs(Path(model))]
    labels = models[0][1]
    results = []
    for path in map(Path, feature_files):
        data = read_feature_file(path)
        bag = Bag(path.stem, torch.from_numpy(data.features.copy()), data.coords)
        outputs = [predict_bags(m, [bag]) for m, _ in models]
        probs = np.mean([p[0] for p, _ in outputs], axis=0)
        maps = [a[0] for _, a in outputs if a[0] is not None]
        attention = np.mean(maps, axis=0) if maps else None
        written: dict[str, Path] = {}
        if heatmaps and attention is not None and data.coords is not None:
            written = _write_heatmaps(out, path.stem, data.attrs, data.coords, attention, top_k)
        results.append(
            SlidePrediction(
                slide=path.stem,
                probabilities={label: float(p) for label, p in zip(labels, probs, strict=True)},
                predicted=labels[int(np.argmax(probs))],
                attention=attention,
                heatmaps=written,
            )
        )
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["slide", "predicted", *(f"p_{label}" for label in labels)])
    for r in results:
        writer.writerow(
            [r.slide, r.predicted, *(f"{r.probabilities[label]:.6f}" for label in labels)]
        )
    write_bytes_atomic(out / PREDICTIONS_NAME, buffer.getvalue().encode())
    return results


def _write_heatmaps(
    out: Path,
    stem: str,
    attrs: dict[str, object],
    coords: np.ndarray,
    scores: np.ndarray,
    top_k: int,
) -> dict[str, Path]:
    from histoguard.errors import SlideError
    from histoguard.report._heatmaps import top_tile_indices, write_heatmaps
    from histoguard.slide import TileSpec, open_slide, read_tiles

    size0 = float(attrs.get("level0_tile_size", 1))  # type: ignore[arg-type]
    slide_path = Path(str(attrs.get("slide_path", "")))
    thumbnail = None
    top_tiles = None
    try:
        with open_slide(slide_path, mpp_override=float(attrs["slide_mpp"])) as slide:  # type: ignore[arg-type]
            thumbnail = slide.get_thumbnail(2048)
            spec = TileSpec.from_attrs(attrs)
            best = top_tile_indices(scores, top_k)
            reads = sorted(read_tiles(slide, spec, coords[best]), key=lambda r: r.index)
            # The gallery pairs tiles with scores by position: only draw it when all were read.
            tiles = [r.tile for r in reads if r.tile is not None]
            if len(tiles) == len(reads):
                top_tiles = np.stack(tiles)
    except (SlideError, KeyError, OSError, ValueError):
        pass  # features without a readable slide still get the GeoJSON map
    if thumbnail is None:
        return write_heatmaps(out, stem, thumbnail=None, downsample=1.0, coords=coords,
                              tile_size0=size0, scores=scores, top_tiles=None)  # fmt: skip
    return write_heatmaps(
        out, stem, thumbnail=thumbnail.image, downsample=thumbnail.downsample, coords=coords,
        tile_size0=size0, scores=scores, top_tiles=top_tiles,
    )  # fmt: skip
