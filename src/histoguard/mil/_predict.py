"""Predicting with trained MIL models: one row per slide, with attention per tile.

This room computes; it draws nothing. :func:`histoguard.report.write_prediction_heatmaps` turns
the returned :class:`SlidePrediction` objects into heatmaps.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from histoguard.core._atomic import remove_stale_temporaries
from histoguard.core._names import bounded_stem, recorded_stem
from histoguard.core._privacy import Anonymizer, is_anonymous_id
from histoguard.errors import ConfigError, ModelMismatchError, OutputError, SlideError
from histoguard.features import FeatureFile, read_feature_file
from histoguard.harmonize import MIN_NEW_CENTER_SLIDES
from histoguard.mil._bags import (
    Bag,
    bag_batch,
    bag_output,
    check_bag_features,
    member_probabilities,
    tile_probabilities,
)
from histoguard.mil._base import MILModel
from histoguard.mil._ensemble import load_models
from histoguard.mil._harmonized import harmonized_members, use_center
from histoguard.mil._prediction import SlidePrediction, write_predictions, write_tile_scores
from histoguard.mil._provenance import check_provenance, read_provenance
from histoguard.mil._trust import TRUST_NAME, apply_trust, load_trust
from histoguard.uncertainty import (
    attention_weighted_uncertainty,
    predictive_entropy,
    slide_embedding,
    uncertainty_measures,
)

logger = logging.getLogger(__name__)


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


def _is_anonymized(path: Path, attrs: Mapping[str, Any]) -> bool:
    """An ``--anonymize`` extraction: named by a pseudonymous id, no slide path recorded."""
    return is_anonymous_id(path.stem) and not attrs.get("slide_path")


@dataclass(frozen=True)
class _Read:
    """One feature file, read and run through the model, before the batch's trust step."""

    path: Path
    data: FeatureFile
    bag: Bag
    logits: np.ndarray
    probs: np.ndarray
    attention: np.ndarray | None
    measures: dict[str, float]
    tiles: np.ndarray
    tile_probs: np.ndarray
    warnings: list[str]


def _view_mean_logits(
    model: MILModel, bag: Bag, logits: np.ndarray, views: np.ndarray
) -> np.ndarray:
    """``(C,)`` log of the mean class probability over the plain bag (its ``logits``) and each
    of the ``(K, N, D)`` augmented views scored as a bag."""
    log_probs = [logits - np.logaddexp.reduce(logits)]
    for view in views:
        view_logits, _ = bag_output(model, replace(bag, features=torch.from_numpy(view.copy())))
        log_probs.append(view_logits - np.logaddexp.reduce(view_logits))
    return np.asarray(np.logaddexp.reduce(np.stack(log_probs), axis=0) - np.log(len(log_probs)))


def _harmonize_new_centers(model: MILModel, bags: Mapping[str, Bag]) -> dict[str, str]:
    """Make a harmonising model ready for these slides' centers: label-free estimates of the
    centers it never saw, from these slides; returns, per center so added, a warning.

    Raises:
        ConfigError: a slide without a center.
        TooFewSlidesError: an unseen center with fewer than the minimum of slides.
    """
    members = harmonized_members(model)
    if not members:
        return {}
    missing = sorted(s for s, bag in bags.items() if bag.center is None)
    if missing:
        raise ConfigError(
            f"the model harmonises features by center, and slides {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''} have none: pass --centers TABLE "
            "(slide_id, center) naming every slide's center"
        )
    added: set[str] = set()
    for member in members:
        added.update(member.add_unseen_centers(bags, list(bags), min_slides=MIN_NEW_CENTER_SLIDES))
    notes = {}
    for center in sorted(added):
        n = sum(bag.center == center for bag in bags.values())
        note = (
            f"center {center!r} was not among the model's training centers: its features were "
            f"harmonised label-free from this batch's {n} slides of it; if its class mix "
            "differs from training, part of the biology was removed too"
        )
        logger.warning("%s", note)
        notes[center] = note
    return notes


def _slide_uncertainty(
    model: MILModel, bag: Bag, attention: np.ndarray | None, mc_dropout: int, seed: int
) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """Slide-level measures over the ensemble members (and MC-dropout passes), ``(N,)``
    per-tile predictive entropy of one-tile bags and ``(N, C)`` their mean class probabilities."""
    features, mask = bag_batch(bag, None, None)
    with use_center(model, bag.center):
        members = member_probabilities(model, features, mask, mc_dropout=mc_dropout, seed=seed)
    measures = uncertainty_measures(members.double().numpy())
    per_member = tile_probabilities(model, bag).astype(np.float64)
    tiles = predictive_entropy(per_member)
    values = {
        "entropy": float(measures.predictive_entropy[0]),
        "mutual_information": float(measures.mutual_information[0]),
        "variance": float(measures.variance[0]),
        "n_members": float(measures.n_members),
    }
    if attention is not None and attention.shape == tiles.shape:
        values["tile_entropy_weighted"] = attention_weighted_uncertainty(
            tiles, attention / attention.sum()
        )
    return values, tiles, per_member.mean(axis=0)


def predict(
    model: str | Path,
    feature_files: Sequence[str | Path],
    out_dir: str | Path,
    *,
    force: bool = False,
    slides: Sequence[str | Path] = (),
    centers: Mapping[str, str] | None = None,
    mc_dropout: int = 0,
    batch_test: bool = True,
    tta: bool = False,
    anonymizer: Anonymizer | None = None,
) -> list[SlidePrediction]:
    """Predict slides from their feature files with a trained model (or the ensemble of folds),
    saying for each whether its prediction can be trusted.

    Writes ``out_dir/predictions.csv`` and ``predictions.json`` (the same fields: decision and
    reason, prediction set, gate p-value, calibrated and raw probabilities, uncertainty) and
    ``tiles.csv`` (one row per tile: name or coordinates, attention and its rank, tile entropy
    and probabilities; see :func:`~histoguard.mil._prediction.write_tile_scores`) and nothing
    else; draw attention and tile uncertainty with
    :func:`histoguard.report.write_prediction_heatmaps`. Each feature file's provenance
    (encoder, weights SHA-256, mpp, tile size) is checked against what the model was trained
    on; a field either side lacks is a warning, not an error.

    With the model's ``trust.json`` (written by ``train`` when it held out calibration slides),
    each slide gets calibrated probabilities, a conformal prediction set and an
    out-of-distribution p-value, the batch is tested for drift, and the decision is the class
    or ``review`` with its reason (see :func:`~histoguard.mil.apply_trust`). Without it the
    decision is the most probable class and a warning says that nothing was checked.

    Args:
        model: a ``train`` output folder (the folds as one ensemble) or one ``fold_i`` folder.
        feature_files: per-slide feature files.
        out_dir: where the predictions go.
        force: predict from features whose provenance differs from the model's (a warning).
        slides: the slides themselves, matched to feature files by stem; used when a file does
            not record its slide (CLAM, TRIDENT) or the slide has moved.
        centers: slide (file stem) -> center, for a model calibrated per center.
        mc_dropout: extra stochastic forward passes per model with dropout on (0: none), added
            to the ensemble members for the uncertainty measures.
        batch_test: test the batch for drift against the training slides (5 slides or more).
        tta: test-time augmentation: the slide's probabilities are the mean over its plain
            features and the K augmented views stored in its feature file (``extract --views K
            --views-mode store``; D4, stain jitter ...), each view scored as a bag; attention
            and the uncertainty measures stay those of the plain features.
        anonymizer: the salt of an ``--anonymize`` extraction: ``slides`` are also matched to
            feature files by their pseudonymous id (feature files named ``anon-<hex>.h5``), and
            no warning names such a slide's path, only its id.

    Returns:
        One :class:`SlidePrediction` per feature file that could be predicted, in order. A file
        that cannot be read, holds no tiles, has features of another width than the model's
        or NaN/infinite features (see :func:`~histoguard.mil._bags.check_bag_features`) is
        left out with a warning and written to ``predictions.csv`` as decision ``failed`` with
        the reason (``predictions.json``: ``failed``), so one bad slide never stops the batch.

    Raises:
        FileNotFoundError: ``model`` holds no model.
        ModelMismatchError: a file's features come from another encoder, weights, mpp or tile
            size than the model's (unless ``force``), or the calibration's classes differ.
        ConfigError: an unreadable ``trust.json``; ``tta`` for a file without stored views.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)  # left by a killed run into this folder
    ensemble, labels, directories = load_models(Path(model))
    trust = load_trust(Path(model))
    if trust is not None and list(trust.labels) != labels:
        raise ModelMismatchError(
            f"{model}: {TRUST_NAME} is for classes {list(trust.labels)}, the model predicts "
            f"{labels}; retrain"
        )
    provenance = read_provenance(directories[0])
    trained_encoder = str(provenance["encoder"]) if provenance.get("encoder") else None
    slide_of = {bounded_stem(Path(s).stem): Path(s) for s in slides}  # by file stem
    if anonymizer is not None:
        slide_of.update({anonymizer.id_for(s): Path(s) for s in slides})
    center_of = dict(centers or {})
    read = []
    failed: dict[str, str] = {}
    for path in map(Path, feature_files):
        # A file unreadable, empty, of another width or not finite fails its own slide only.
        try:
            data = read_feature_file(path, views=tta)
            check_bag_features(path, data.features, ensemble.in_dim, encoder=trained_encoder,
                               views=data.views if tta else None)  # fmt: skip
        except (OutputError, ModelMismatchError) as error:
            failed[path.stem] = str(error)
            logger.warning("%s", error)
            continue
        if tta and data.views is None:
            raise ConfigError(
                f"{path}: --tta needs augmented views in the feature file, and it has none; "
                "extract with --views K --views-mode store (and --augment ...), or drop --tta"
            )
        warnings = check_provenance(provenance, data.attrs, path, force=force)
        features = torch.from_numpy(data.features.copy())
        slide_id = recorded_stem(path, data.attrs)  # the original stem of a bounded name
        center = center_of.get(slide_id) or None
        bag = Bag(slide_id, features, data.coords, data.attrs, center)
        read.append((path, data, bag, warnings))
    harmonized = _harmonize_new_centers(ensemble, {bag.slide_id: bag for _, _, bag, _ in read})
    parts: list[_Read] = []
    for path, data, bag, warnings in read:
        warnings = warnings + ([harmonized[bag.center]] if bag.center in harmonized else [])
        # One ensemble pass gives the logits (for the trust step), probabilities and attention.
        logits, attention = bag_output(ensemble, bag)
        if tta and data.views is not None:
            logits = _view_mean_logits(ensemble, bag, logits, data.views)
        if not np.isfinite(logits).all():
            # Finite features and weights can still overflow: never label a NaN.
            failed[path.stem] = (
                f"{path}: the model's output on this slide is NaN or infinite (its features "
                "are finite: the model overflows on them); not predicted. Check that the "
                "features come from the model's encoder, or retrain"
            )
            logger.warning("%s", failed[path.stem])
            continue
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        measures, tiles, tile_probs = _slide_uncertainty(
            ensemble, bag, attention, mc_dropout, len(parts)
        )
        parts.append(
            _Read(path, data, bag, logits, probs, attention, measures, tiles, tile_probs, warnings)
        )
    reading = None
    if trust is not None and parts:
        reading = apply_trust(
            trust,
            np.stack([part.logits for part in parts]),
            np.stack([slide_embedding(part.bag.features.numpy()) for part in parts]),
            centers=[center_of.get(part.bag.slide_id, "") for part in parts],
            test_batch=batch_test,
        )
    if trust is None:
        logger.warning(
            "%s: no %s, so no calibration, prediction set or out-of-distribution gate: the "
            "decision is the most probable class, unchecked; retrain with "
            "calibration_fraction > 0",
            model, TRUST_NAME,
        )  # fmt: skip
    results = []
    for i, part in enumerate(parts):
        path, data, probs, warnings = part.path, part.data, part.probs, part.warnings
        raw = {label: float(p) for label, p in zip(labels, probs, strict=True)}
        calibrated, decision, reason, p_value = raw, "", "", None
        prediction_set: tuple[str, ...] = ()
        if reading is not None:
            calibrated = dict(zip(labels, map(float, reading.probabilities[i]), strict=True))
            prediction_set = tuple(
                c for c, keep in zip(labels, reading.sets[i], strict=True) if keep
            )
            decision, reason = reading.decisions[i], reading.reasons[i]
            p_value = float(reading.ood_p_values[i])
        else:
            decision = labels[int(np.argmax(probs))]
        slide_path = _slide_for(path, data.attrs, slide_of)
        results.append(
            SlidePrediction(
                slide=part.bag.slide_id,
                probabilities=calibrated,
                predicted=labels[int(np.argmax(probs))],
                attention=part.attention,
                coords=data.coords,
                tile_size0=level0_tile_size(data.attrs, slide_path),
                slide_path=slide_path,
                feature_file=path,
                anonymized=_is_anonymized(path, data.attrs),
                attrs=data.attrs,
                warnings=tuple(warnings),
                raw_probabilities=raw,
                prediction_set=prediction_set,
                decision=decision,
                reason=reason,
                ood_p_value=p_value,
                uncertainty=part.measures,
                tile_uncertainty=part.tiles,
                tile_probabilities=part.tile_probs,
                tile_names=data.tile_names,
            )
        )
    write_predictions(
        results, labels, out, trust=trust, reading=reading, model=Path(model), failed=failed
    )
    write_tile_scores(results, labels, out)
    return results
