"""What the viewer shows of a prediction: each tile's scores and the slide's verdict.

They come from two places, both outputs of :func:`histoguard.mil.predict`: the files a
``histoguard predict`` run wrote (``predictions.json`` for the verdicts, the QuPath map
``<slide>.attention.geojson`` for each tile's attention and predictive entropy), or a
:class:`~histoguard.mil.SlidePrediction` made on request by ``POST /predict`` (which also has
each tile's class probabilities). Nothing here computes a score.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from histoguard.core._ranking import descending_ranks
from histoguard.errors import ConfigError, RequestError
from histoguard.report._heatmaps import UNCERTAINTY_MEASUREMENT, rank_normalise
from histoguard.report._tile_layers import LAYER_NAMES, LayerName, LayerStyle, layer_style
from histoguard.serve._config import inside

if TYPE_CHECKING:
    from histoguard.mil import SlidePrediction

logger = logging.getLogger(__name__)

#: ``decision`` of a slide sent to review (as :mod:`histoguard.mil` writes it).
_REVIEW = "review"


@dataclass(frozen=True, eq=False)
class SlideScores:
    """One slide's prediction as the viewer shows it.

    Attributes:
        slide: the slide id.
        classes: the model's class names.
        coords: ``(N, 2)`` level-0 (x, y) top-left corners of the scored tiles.
        tile_size0: their side in level-0 pixels.
        attention: ``(N,)`` attention scores, or None.
        uncertainty: ``(N,)`` predictive entropy of each tile in nats, or None.
        probabilities: ``(N, C)`` each tile's class probabilities (one-tile bags), or None.
        verdict: the slide-level fields of ``predictions.json`` (decision, reason, predicted,
            prediction_set, ood_p_value, probabilities, uncertainty, warnings).
        ood_alpha: the gate's threshold, when the model has one.
        source: ``"predictions"`` (files of a predict run) or ``"predict"`` (on request).
        geojson: the QuPath file of a predict run, when there is one.
    """

    slide: str
    classes: tuple[str, ...]
    coords: np.ndarray
    tile_size0: float
    attention: np.ndarray | None
    uncertainty: np.ndarray | None
    probabilities: np.ndarray | None
    verdict: Mapping[str, Any]
    ood_alpha: float | None = None
    source: str = "predictions"
    geojson: Path | None = None
    _rank: np.ndarray | None = field(default=None, repr=False)

    @property
    def positive(self) -> str:
        """The class the probability layer shows: the decided class, else the most probable."""
        decision = str(self.verdict.get("decision", ""))
        return decision if decision in self.classes else str(self.verdict.get("predicted", ""))

    def flags(self) -> list[str]:
        """What a reader should notice: review and its reason, OOD, the warnings."""
        out = []
        if self.verdict.get("decision") == _REVIEW:
            out.append(f"review: {self.verdict.get('reason') or 'no reason given'}")
        if self.is_ood():
            out.append("out of distribution")
        if not self.verdict.get("prediction_set") and self.ood_alpha is None:
            out.append("unchecked: the model has no calibration")
        out += [f"warning: {w}" for w in self.verdict.get("warnings", [])]
        return out

    def is_ood(self) -> bool | None:
        """The gate's verdict (p-value at or below its threshold), None without a gate."""
        p = self.verdict.get("ood_p_value")
        if p is None:
            return None
        if self.ood_alpha is not None:
            return bool(float(p) <= self.ood_alpha)
        return self.verdict.get("reason") == "out-of-distribution"

    def layers(self) -> list[LayerName]:
        """The overlay layers this prediction can draw."""
        out: list[LayerName] = []
        for name in LAYER_NAMES:
            values = self.values(name)
            if values is not None and np.isfinite(values).any():
                out.append(name)
        return out

    def style(self, name: LayerName) -> LayerStyle:
        """The layer's colours and legend for this model's classes."""
        return layer_style(name, self.classes, self.positive)

    def values(self, name: LayerName) -> np.ndarray | None:
        """``(N,)`` values of layer ``name`` in its unit (slide-level ones repeated), or None."""
        n = len(self.coords)
        verdict = self.verdict
        if name == "attention":
            return self.attention
        if name == "uncertainty":
            return self.uncertainty
        if name == "probability":
            if self.probabilities is None or self.positive not in self.classes:
                return None
            return self.probabilities[:, self.classes.index(self.positive)]
        if name == "set_size":
            has_set = self.ood_alpha is not None or bool(verdict.get("prediction_set"))
            size = len(verdict.get("prediction_set", []))
            return np.full(n, float(size)) if has_set else None
        if name == "abstention":
            if self.ood_alpha is None and not verdict.get("prediction_set"):
                return None  # without calibration there was no decision to abstain from
            return np.full(n, float(verdict.get("decision") == _REVIEW))
        ood = self.is_ood()
        return None if ood is None else np.full(n, float(ood))

    def attention_rank(self) -> np.ndarray | None:
        """``(N,)`` 1 for the tile with the highest attention, N for the lowest (non-finite
        last): :func:`~histoguard.core._ranking.descending_ranks`."""
        if self.attention is None:
            return None
        if self._rank is None:
            object.__setattr__(self, "_rank", descending_ranks(self.attention))
        return self._rank

    def tile_at(self, x: float, y: float) -> int:
        """Index of the scored tile covering level-0 point (x, y); the highest-attention one
        where tiles overlap.

        Raises:
            RequestError: 404 when no scored tile covers the point.
        """
        xy = self.coords
        hit = np.flatnonzero(
            (xy[:, 0] <= x) & (x < xy[:, 0] + self.tile_size0)
            & (xy[:, 1] <= y) & (y < xy[:, 1] + self.tile_size0)
        )  # fmt: skip
        if not len(hit):
            raise RequestError(404, f"no scored tile at ({x:g}, {y:g})")
        rank = self.attention_rank()
        return int(hit[np.argmin(rank[hit])] if rank is not None else hit[0])

    def tile_report(self, index: int) -> dict[str, Any]:
        """One tile's scores: position, attention and its rank, entropy, class probabilities."""
        if not 0 <= index < len(self.coords):
            raise RequestError(404, f"no tile {index}; the slide has {len(self.coords)}")
        x, y = (float(v) for v in self.coords[index])
        report: dict[str, Any] = {
            "index": index, "x": x, "y": y, "size": self.tile_size0, "n_tiles": len(self.coords),
        }  # fmt: skip
        rank = self.attention_rank()
        if self.attention is not None and rank is not None:
            report["attention"] = _finite(self.attention[index])
            report["attention_rank"] = int(rank[index])
            report["attention_rank_scaled"] = _finite(rank_normalise(self.attention)[index])
        if self.uncertainty is not None:
            report["entropy_nats"] = _finite(self.uncertainty[index])
        if self.probabilities is not None:
            report["probabilities"] = {
                c: _finite(p) for c, p in zip(self.classes, self.probabilities[index], strict=True)
            }
        return report

    def top(self, k: int) -> list[dict[str, Any]]:
        """The ``k`` tiles with the highest attention, highest first (empty without attention)."""
        rank = self.attention_rank()
        if rank is None or self.attention is None:
            return []
        order = np.argsort(rank, kind="stable")
        finite = [int(i) for i in order if np.isfinite(self.attention[i])]
        return [self.tile_report(i) for i in finite[: max(0, k)]]

    def summary(self) -> dict[str, Any]:
        """The slide's verdict, flags and layers as JSON."""
        v = self.verdict
        return {
            "source": self.source, "classes": list(self.classes),
            "decision": v.get("decision", ""), "reason": v.get("reason", ""),
            "predicted": v.get("predicted", ""),
            "prediction_set": list(v.get("prediction_set", [])),
            "ood_p_value": v.get("ood_p_value"), "ood_alpha": self.ood_alpha,
            "out_of_distribution": self.is_ood(),
            "probabilities": dict(v.get("probabilities", {})),
            "uncertainty": dict(v.get("uncertainty", {})), "flags": self.flags(),
            "layers": self.layers(), "n_tiles": len(self.coords),
        }  # fmt: skip


def _finite(value: float) -> float | None:
    v = float(value)
    return v if math.isfinite(v) else None


def from_prediction(
    slide: str, prediction: SlidePrediction, classes: list[str], ood_alpha: float | None
) -> SlideScores:
    """The viewer's scores of a prediction made on request.

    Raises:
        RequestError: 409 when the feature file has no tile coordinates or tile size.
    """
    if prediction.coords is None or prediction.tile_size0 is None:
        raise RequestError(
            409, f"{slide}: the feature file has no tile coordinates or tile size to map"
        )
    verdict = {
        "decision": prediction.decision, "reason": prediction.reason,
        "predicted": prediction.predicted, "prediction_set": list(prediction.prediction_set),
        "ood_p_value": prediction.ood_p_value, "probabilities": prediction.probabilities,
        "raw_probabilities": prediction.raw_probabilities,
        "uncertainty": dict(prediction.uncertainty), "warnings": list(prediction.warnings),
    }  # fmt: skip
    return SlideScores(
        slide=slide, classes=tuple(classes), coords=np.asarray(prediction.coords, np.float64),
        tile_size0=float(prediction.tile_size0), attention=prediction.attention,
        uncertainty=prediction.tile_uncertainty, probabilities=prediction.tile_probabilities,
        verdict=verdict, ood_alpha=ood_alpha, source="predict",
    )  # fmt: skip


def _tiles_of_geojson(path: Path) -> tuple[np.ndarray, float, dict[str, np.ndarray]]:
    """Corners, tile side and measurements of a QuPath tile map written by predict."""
    document = json.loads(path.read_text(encoding="utf-8"))
    corners, sides, measured = [], [], []
    for feature in document.get("features", []):
        ring = np.asarray(feature["geometry"]["coordinates"][0], dtype=np.float64)
        corners.append(ring.min(axis=0))
        sides.append(float(np.ptp(ring[:, 0])))
        measured.append(feature.get("properties", {}).get("measurements", {}))
    if not corners:
        raise ConfigError(f"{path}: the map has no tiles")
    names = {name for m in measured for name in m}
    values = {
        name: np.array([np.nan if m.get(name) is None else m[name] for m in measured], float)
        for name in names
    }
    return np.stack(corners), float(np.median(sides)), values


def _tile_table(directory: Path, classes: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per slide, the ``(N, 2)`` tile corners and ``(N, C)`` tile class probabilities of
    predict's ``tiles.csv`` (empty without one; an unreadable one is logged and left out)."""
    path = directory / "tiles.csv"  # mil's TILE_SCORES_NAME; importing mil would load torch
    rows: dict[str, tuple[list[tuple[float, float]], list[list[float]]]] = {}
    try:
        with inside(directory, path).open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                corners, probs = rows.setdefault(row["slide"], ([], []))
                corners.append((float(row["x"]), float(row["y"])))
                probs.append([float(row[f"tile_p_{c}"] or "nan") for c in classes])
    except FileNotFoundError:
        return {}
    except (RequestError, OSError, ValueError, KeyError) as error:
        logger.warning("%s: tile probabilities not read (%s)", path, error)
        return {}
    return {s: (np.asarray(c, float), np.asarray(p, float)) for s, (c, p) in rows.items()}


def _matching(table: tuple[np.ndarray, np.ndarray] | None, coords: np.ndarray) -> np.ndarray | None:
    """The table's probabilities when its tiles are the map's, in the same order; else None."""
    if table is None or len(table[0]) != len(coords) or not len(coords):
        return None
    corners, probabilities = table
    if not np.allclose(corners, coords) or not np.isfinite(probabilities).any():
        return None
    return probabilities


def load_predictions(directory: Path, slide_ids: set[str]) -> dict[str, SlideScores]:
    """The scores of a ``histoguard predict`` output folder, for the slides being served.

    Args:
        directory: a resolved root holding ``predictions.json`` and the heatmap files.
        slide_ids: the served slides; predictions of other slides are left out.

    Raises:
        ConfigError: no readable ``predictions.json`` in ``directory``.
    """
    path = directory / "predictions.json"  # mil's PREDICTIONS_JSON (see tiles.csv above)
    try:
        document = json.loads(inside(directory, path).read_text(encoding="utf-8"))
        classes = [str(c) for c in document["classes"]]
        rows = list(document["slides"])
    except (RequestError, OSError, ValueError, KeyError, TypeError) as error:
        raise ConfigError(
            f"{path}: not a histoguard predictions file ({error}); pass the --out folder of "
            "`histoguard predict` as --predictions"
        ) from None
    trust = document.get("trust") or {}
    ood_alpha = None if trust.get("ood_alpha") is None else float(trust["ood_alpha"])
    tile_table = _tile_table(directory, classes)
    scores = {}
    for row in rows:
        slide = str(row.get("slide", ""))
        if slide not in slide_ids:
            continue
        geojson = directory / f"{slide}.attention.geojson"
        try:
            coords, size0, values = _tiles_of_geojson(inside(directory, geojson))
        except (RequestError, OSError, ValueError, KeyError, TypeError, ConfigError) as error:
            logger.warning("%s: no tile map for the overlays (%s)", geojson, error)
            coords, size0, values = np.zeros((0, 2)), 1.0, {}
        scores[slide] = SlideScores(
            slide=slide, classes=tuple(classes), coords=coords, tile_size0=size0,
            attention=values.get("attention"), uncertainty=values.get(UNCERTAINTY_MEASUREMENT),
            probabilities=_matching(tile_table.get(slide), coords), verdict=row,
            ood_alpha=ood_alpha, source="predictions",
            geojson=geojson if len(coords) else None,
        )  # fmt: skip
    return scores
