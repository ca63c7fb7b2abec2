"""Predicting with trained MIL models: one row per slide, with attention per tile.

This room computes; it draws nothing. :func:`histoguard.report.write_prediction_heatmaps` turns
the returned :class:`SlidePrediction` objects into heatmaps.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from histoguard.core._atomic import write_bytes_atomic
from histoguard.errors import SlideError
from histoguard.features import read_feature_file
from histoguard.mil._ensemble import load_models
from histoguard.mil._provenance import check_provenance, read_provenance
from histoguard.mil._train import Bag, predict_bags

logger = logging.getLogger(__name__)

PREDICTIONS_NAME = "predictions.csv"


@dataclass(frozen=True, eq=False)
class SlidePrediction:
    """One slide's prediction, averaged over the models (folds) that made it.

    Attributes:
        slide: the slide's name (the feature file's stem).
        probabilities: class name -> probability.
        predicted: the most probable class.
        attention: ``(N,)`` attention per tile (mean over the models), or None for models
            without attention.
        coords: ``(N, 2)`` level-0 x, y of each tile's top-left corner, or None.
        tile_size0: tile side in level-0 pixels, or None when the feature file does not say
            (see :func:`level0_tile_size`).
        slide_path: the slide the features came from, when known.
        feature_file: the feature file predicted from.
        attrs: the feature file's attributes (provenance, tiling).
        warnings: what could not be checked or was forced (also logged).
        raw_probabilities: class name -> the ensemble's probability before calibration (equal
            to ``probabilities`` when the model has no calibration).
        prediction_set: the conformal prediction set (class names), empty when the model has
            no conformal calibration.
        decision: the predicted class, or ``"review"``.
        reason: why the decision is ``"review"``: ``"out-of-distribution"``, ``"batch drift"``
            or ``"uncertain"`` (the set is not one class); ``""`` otherwise.
        ood_p_value: the gate's conformal p-value (small: unlike the training slides), or None
            without a gate.
        uncertainty: slide-level measures: ``entropy``, ``mutual_information`` (nats),
            ``variance``, ``n_members``, ``tile_entropy_weighted`` (attention-weighted tile
            entropy, nats, when the model gives attention).
        tile_uncertainty: ``(N,)`` per-tile predictive entropy in nats (each tile as a one-tile
            bag, over the ensemble members; at most ln C), or None.
    """

    slide: str
    probabilities: dict[str, float]
    predicted: str
    attention: np.ndarray | None
    coords: np.ndarray | None = None
    tile_size0: float | None = None
    slide_path: Path | None = None
    feature_file: Path | None = None
    attrs: Mapping[str, Any] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    raw_probabilities: dict[str, float] = field(default_factory=dict)
    prediction_set: tuple[str, ...] = ()
    decision: str = ""
    reason: str = ""
    ood_p_value: float | None = None
    uncertainty: Mapping[str, float] = field(default_factory=dict)
    tile_uncertainty: np.ndarray | None = None


def _downsample_of_level(slide_path: Path | None, level: int) -> float | None:
    """Level-0 pixels per pixel of ``level`` of the slide, or None if it cannot be opened."""
    from histoguard.slide import open_slide

    if slide_path is None:
        return None
    try:
        with open_slide(slide_path, require_mpp=False) as slide:
            downsamples = slide.level_downsamples
    except (SlideError, OSError, ValueError) as error:
        logger.debug("cannot open %s for its level downsamples: %s", slide_path, error)
        return None
    return float(downsamples[level]) if 0 <= level < len(downsamples) else None


def level0_tile_size(attrs: Mapping[str, Any], slide_path: Path | None = None) -> float | None:
    """A feature file's tile side in level-0 pixels, from whichever tool wrote it.

    Looks, in order, for TRIDENT's (and histoguard's) ``patch_size_level0``, histoguard's
    ``level0_tile_size``, then CLAM's ``patch_size`` (pixels at ``patch_level``) times the
    downsample of that level: from CLAM's ``downsample`` attribute, else read from the slide.

    Args:
        attrs: the feature file's attributes (root merged with those of ``coords``).
        slide_path: the slide, to read a level's downsample when the file does not record it.

    Returns:
        The size, or None when the file does not say and the slide cannot tell.
    """
    for name in ("patch_size_level0", "level0_tile_size"):
        if name in attrs and float(attrs[name]) > 0:
            return float(attrs[name])
    if "patch_size" not in attrs:
        return None
    size, level = float(attrs["patch_size"]), int(attrs.get("patch_level", 0))
    if level == 0:
        return size
    recorded = attrs.get("downsample")
    if recorded is not None:
        return size * float(np.asarray(recorded, dtype=np.float64).ravel()[0])
    downsample = _downsample_of_level(slide_path, level)
    return None if downsample is None else size * downsample


def _slide_for(path: Path, attrs: Mapping[str, Any], slides: Mapping[str, Path]) -> Path | None:
    if path.stem in slides:
        return slides[path.stem]
    recorded = str(attrs.get("slide_path", ""))
    return Path(recorded) if recorded else None


def predict(
    model: str | Path,
    feature_files: Sequence[str | Path],
    out_dir: str | Path,
    *,
    force: bool = False,
    slides: Sequence[str | Path] = (),
) -> list[SlidePrediction]:
    """Predict slides from their feature files with a trained model (or the ensemble of folds).

    Writes ``out_dir/predictions.csv`` (slide, predicted label, one probability per class) and
    nothing else; draw the attention with :func:`histoguard.report.write_prediction_heatmaps`.
    Each feature file's provenance (encoder, weights SHA-256, mpp, tile size) is checked against
    what the model was trained on; a field either side lacks is a warning, not an error.

    Args:
        model: a ``train`` output folder (the folds' probabilities and attention are averaged)
            or one ``fold_i`` folder.
        feature_files: per-slide feature files.
        out_dir: where ``predictions.csv`` goes.
        force: predict from features whose provenance differs from the model's (a warning).
        slides: the slides themselves, matched to feature files by stem; used when a file does
            not record its slide (CLAM, TRIDENT) or the slide has moved.

    Returns:
        One :class:`SlidePrediction` per feature file, in order.

    Raises:
        FileNotFoundError: ``model`` holds no model.
        ModelMismatchError: a file's features come from another encoder, weights, mpp or tile
            size than the model's (unless ``force``).
        OutputError: a feature file cannot be read.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ensemble, labels, directories = load_models(Path(model))
    provenance = read_provenance(directories[0])
    slide_of = {Path(s).stem: Path(s) for s in slides}
    results = []
    for path in map(Path, feature_files):
        data = read_feature_file(path)
        warnings = check_provenance(provenance, data.attrs, path, force=force)
        bag = Bag(path.stem, torch.from_numpy(data.features.copy()), data.coords, data.attrs)
        (probs,), (attention,) = predict_bags(ensemble, [bag])
        slide_path = _slide_for(path, data.attrs, slide_of)
        results.append(
            SlidePrediction(
                slide=path.stem,
                probabilities={label: float(p) for label, p in zip(labels, probs, strict=True)},
                predicted=labels[int(np.argmax(probs))],
                attention=attention,
                coords=data.coords,
                tile_size0=level0_tile_size(data.attrs, slide_path),
                slide_path=slide_path,
                feature_file=path,
                attrs=data.attrs,
                warnings=tuple(warnings),
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
