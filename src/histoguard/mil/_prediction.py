"""One slide's prediction, and the two files that carry a batch of them: ``predictions.csv``
(opens in pandas or a spreadsheet) and ``predictions.json`` (the same fields, plus the batch
drift test and the trust settings)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from histoguard._version import __version__
from histoguard.core._atomic import write_bytes_atomic
from histoguard.core._ranking import descending_ranks
from histoguard.mil._trust import REVIEW, Trust, TrustReading

PREDICTIONS_NAME = "predictions.csv"
PREDICTIONS_JSON = "predictions.json"
#: One row per tile of every predicted slide (attention, rank, uncertainty, probabilities).
TILE_SCORES_NAME = "tiles.csv"
_FORMAT = "histoguard.predictions"
_VERSION = 1
#: The slide-level uncertainty columns, in order (nats, except variance and members).
UNCERTAINTY_COLUMNS = (
    "entropy", "mutual_information", "variance", "n_members", "tile_entropy_weighted",
)  # fmt: skip


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
        anonymized: the slide is named by its pseudonymous id (an ``--anonymize`` extraction):
            no output or message may show ``slide_path``, only :attr:`slide`.
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
        tile_names: ``N`` tile image names (a tile folder's files, in row order), or None for
            tiles of a slide (which have coordinates instead).
        tile_probabilities: ``(N, C)`` each tile's class probabilities as a one-tile bag (mean
            over the ensemble members, before calibration; columns in the model's class
            order), or None.
    """

    slide: str
    probabilities: dict[str, float]
    predicted: str
    attention: np.ndarray | None
    coords: np.ndarray | None = None
    tile_size0: float | None = None
    slide_path: Path | None = None
    feature_file: Path | None = None
    anonymized: bool = False
    attrs: Mapping[str, Any] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    raw_probabilities: dict[str, float] = field(default_factory=dict)
    prediction_set: tuple[str, ...] = ()
    decision: str = ""
    reason: str = ""
    ood_p_value: float | None = None
    uncertainty: Mapping[str, float] = field(default_factory=dict)
    tile_uncertainty: np.ndarray | None = None
    tile_probabilities: np.ndarray | None = None
    tile_names: tuple[str, ...] | None = None

    def summary(self, *, brief: bool = False) -> str:
        """The decision and its evidence in one line, for the console and for map titles.

        ``tumour (p = 0.97; set {tumour}; gate p = 0.41)``;
        ``review: out of distribution (gate p = 0.003; most probable tumour, p = 0.99)``;
        ``review: uncertain (set {normal, tumour}; ...)``; ``review: batch drift (...)``;
        ``tumour (p = 0.97; unchecked: the model has no calibration)`` for a model without
        ``trust.json``; ``predicted tumour (p = 0.97)`` when no decision was made.

        Args:
            brief: leave out what a map title does not need (the most probable class of a
                slide under review, the gate p-value of a decided one, "unchecked").
        """
        probability = self.probabilities.get(self.predicted, float("nan"))
        top = f"p = {probability:.2f}"
        gate = "" if self.ood_p_value is None else f"gate p = {self.ood_p_value:.2g}"
        chosen = "set {" + ", ".join(self.prediction_set) + "}" if self.prediction_set else ""
        if not self.decision:
            return f"predicted {self.predicted} ({top})"
        if self.decision != REVIEW:
            evidence = [f"p = {self.probabilities.get(self.decision, probability):.2f}"]
            evidence += [chosen] if chosen else []
            if not brief:
                evidence.append(gate or "unchecked: the model has no calibration")
            return f"{self.decision} ({'; '.join(evidence)})"
        if not self.reason:
            return REVIEW
        evidence = []
        if self.reason == "out-of-distribution" and gate:
            evidence.append(gate)
        if self.reason == "uncertain":
            evidence.append(chosen or "empty set")
        if not brief:
            evidence.append(f"most probable {self.predicted}, {top}")
        text = f"{REVIEW}: {self.reason.replace('-', ' ')}"
        return f"{text} ({'; '.join(evidence)})" if evidence else text


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


def write_tile_scores(results: Sequence[SlidePrediction], labels: Sequence[str], out: Path) -> Path:
    """Write ``tiles.csv``: one row per tile of every slide (atomically), for joining to tile
    names or coordinates in one line (``pd.read_csv("tiles.csv").merge(...)``).

    Columns: ``slide, tile`` (the tile image's file name for tile folders, empty for slides),
    ``x, y`` (level-0 pixels of the tile's top-left corner; for tile folders the row index and
    0), ``attention`` (the model's weight, empty for models without attention),
    ``attention_rank`` (1 = most attended in its slide), ``tile_entropy`` (nats, each tile as a
    one-tile bag, when computed) and ``tile_p_<class>``.

    Returns:
        The file written.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["slide", "tile", "x", "y", "attention", "attention_rank", "tile_entropy",
                     *(f"tile_p_{label}" for label in labels)])  # fmt: skip
    for r in results:
        n = 0 if r.coords is None else len(r.coords)
        attention = None if r.attention is None else np.asarray(r.attention, dtype=np.float64)
        rank = None
        if attention is not None and len(attention) == n:
            rank = descending_ranks(attention)
        for i in range(n):
            name = r.tile_names[i] if r.tile_names is not None and i < len(r.tile_names) else ""
            x, y = (int(v) for v in r.coords[i]) if r.coords is not None else (i, 0)
            entropy = r.tile_uncertainty
            probs = r.tile_probabilities
            writer.writerow(
                [
                    r.slide, name, x, y,
                    "" if attention is None or rank is None else f"{attention[i]:.6g}",
                    "" if rank is None else int(rank[i]),
                    "" if entropy is None or len(entropy) != n else f"{float(entropy[i]):.6g}",
                    *(("",) * len(labels) if probs is None or len(probs) != n
                      else (f"{float(v):.6f}" for v in probs[i])),
                ]
            )  # fmt: skip
    path = out / TILE_SCORES_NAME
    write_bytes_atomic(path, buffer.getvalue().encode())
    return path


def write_predictions(
    results: Sequence[SlidePrediction],
    labels: Sequence[str],
    out: Path,
    *,
    trust: Trust | None,
    reading: TrustReading | None,
    model: Path,
    failed: Mapping[str, str] | None = None,
) -> None:
    """Write ``predictions.csv`` and ``predictions.json`` into ``out`` (atomically).

    CSV columns: ``slide, decision, reason, predicted, prediction_set`` (classes joined by
    ``|``), ``ood_p_value``, ``p_<class>`` (calibrated), ``raw_p_<class>``, then
    :data:`UNCERTAINTY_COLUMNS`; empty cells where a value does not exist. Each slide of
    ``failed`` (slide -> why) is a row with decision ``failed`` and the reason, and is listed
    under ``failed`` in the JSON.
    """
    failed = dict(failed or {})
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(
        [
            "slide", "decision", "reason", "predicted", "prediction_set", "ood_p_value",
            *(f"p_{label}" for label in labels), *(f"raw_p_{label}" for label in labels),
            *UNCERTAINTY_COLUMNS,
        ]
    )  # fmt: skip
    for r in results:
        writer.writerow(
            [
                r.slide, r.decision, r.reason, r.predicted, "|".join(r.prediction_set),
                _number(r.ood_p_value),
                *(f"{r.probabilities[label]:.6f}" for label in labels),
                *(f"{r.raw_probabilities[label]:.6f}" for label in labels),
                *(_number(r.uncertainty.get(name)) for name in UNCERTAINTY_COLUMNS),
            ]
        )  # fmt: skip
    for slide, why in failed.items():
        writer.writerow(
            [slide, "failed", why] + [""] * (3 + 2 * len(labels) + len(UNCERTAINTY_COLUMNS))
        )
    write_bytes_atomic(out / PREDICTIONS_NAME, buffer.getvalue().encode())
    drift = None
    if reading is not None and reading.drift is not None:
        drift = {**asdict(reading.drift), "slides": len(results)}
    document: dict[str, Any] = {
        "format": _FORMAT,
        "version": _VERSION,
        "histoguard_version": __version__,
        "model": str(model),
        "classes": list(labels),
        "trust": None if trust is None else {
            **asdict(trust.settings), "calibration_slides": len(trust.calibration_slides),
            "warnings": list(trust.warnings),
        },
        "batch_drift": drift,
        "notes": [] if reading is None else list(reading.notes),
        "failed": [{"slide": slide, "reason": why} for slide, why in failed.items()],
        "slides": [
            {
                "slide": r.slide, "decision": r.decision, "reason": r.reason,
                "predicted": r.predicted, "prediction_set": list(r.prediction_set),
                "ood_p_value": r.ood_p_value, "probabilities": r.probabilities,
                "raw_probabilities": r.raw_probabilities, "uncertainty": dict(r.uncertainty),
                "warnings": list(r.warnings),
            }
            for r in results
        ],
    }  # fmt: skip
    write_bytes_atomic(out / PREDICTIONS_JSON, (json.dumps(document, indent=1) + "\n").encode())
