"""What a trained model was trained on (encoder, weights, scale, tile size), and the check that
features given to it come from the same place.

Two encoders can share an embedding width (UNI and Phikon-v2 are both 1,024-d), so the feature
dimension alone cannot tell that a model is fed features it was never trained on. The training
feature files' provenance attributes are recorded in ``model.json`` and compared at prediction.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from histoguard.errors import ModelMismatchError

logger = logging.getLogger(__name__)

#: Feature-file attributes recorded with a model: encoder name, SHA-256 of its weights
#: (empty for encoders without a weights file), tile resolution in µm/px, tile side in pixels.
PROVENANCE_FIELDS = ("encoder", "weights_sha256", "mpp", "tile_size")

#: Relative difference below which two resolutions count as the same (rounding in metadata).
MPP_TOLERANCE = 0.01


def _plain(value: Any) -> Any:
    """A JSON-compatible scalar: numpy scalars unwrapped, floats of whole ints kept as given."""
    return value.item() if hasattr(value, "item") else value


def training_provenance(attrs: Iterable[tuple[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """The provenance shared by every training feature file.

    Args:
        attrs: ``(slide_id, feature-file attributes)`` for each training bag.

    Returns:
        ``{field: value}`` for each of :data:`PROVENANCE_FIELDS` that every file carries with
        one value. A field some files lack, or that differs between files, is left out (with a
        logged warning when it differs), so prediction cannot check it.
    """
    values: dict[str, dict[str, list[str]]] = {name: {} for name in PROVENANCE_FIELDS}
    n_files = 0
    for slide_id, file_attrs in attrs:
        n_files += 1
        for name in PROVENANCE_FIELDS:
            if name in file_attrs:
                key = json.dumps(_plain(file_attrs[name]))
                values[name].setdefault(key, []).append(slide_id)
    recorded: dict[str, Any] = {}
    for name, seen in values.items():
        if len(seen) > 1:
            listing = "; ".join(f"{json.loads(k)!r}: {', '.join(v[:3])}" for k, v in seen.items())
            logger.warning(
                "training feature files disagree on %s (%s); the model does not record it and "
                "prediction cannot check it. Extract every slide with the same settings",
                name,
                listing,
            )
        elif len(seen) == 1 and sum(len(v) for v in seen.values()) == n_files:
            recorded[name] = json.loads(next(iter(seen)))
    return recorded


def read_provenance(model_dir: Path) -> dict[str, Any]:
    """The provenance recorded in ``model_dir/model.json`` (empty for models saved before
    histoguard recorded it)."""
    description = json.loads((Path(model_dir) / "model.json").read_text())
    provenance = description.get("provenance") or {}
    return dict(provenance)


def _same(field: str, expected: Any, actual: Any) -> bool:
    if field == "mpp":
        try:
            a, b = float(expected), float(actual)
        except (TypeError, ValueError):
            return bool(expected == actual)
        return math.isclose(a, b, rel_tol=MPP_TOLERANCE)
    if field == "tile_size":
        try:
            return int(expected) == int(actual)
        except (TypeError, ValueError):
            return bool(expected == actual)
    return bool(str(expected) == str(actual))


def check_provenance(
    model_provenance: Mapping[str, Any],
    file_attrs: Mapping[str, Any],
    path: Path,
    *,
    force: bool = False,
) -> list[str]:
    """Compare a feature file's provenance with the model's.

    Args:
        model_provenance: what the model recorded (:func:`read_provenance`).
        file_attrs: the feature file's attributes.
        path: the feature file, for messages.
        force: turn mismatches into warnings.

    Returns:
        Warnings (also logged): fields that cannot be checked because either side lacks them,
        and, with ``force``, the mismatches.

    Raises:
        ModelMismatchError: a field differs (and not ``force``); the message names the file,
            the field, both values and the fix.
    """
    warnings: list[str] = []
    missing = []
    for name in PROVENANCE_FIELDS:
        if name not in model_provenance or name not in file_attrs:
            side = "the model" if name not in model_provenance else "the feature file"
            missing.append(f"{name} (not recorded by {side})")
            continue
        expected, actual = _plain(model_provenance[name]), _plain(file_attrs[name])
        if _same(name, expected, actual):
            continue
        message = (
            f"{path}: {name} is {actual!r} but the model was trained on features with "
            f"{name} {expected!r}"
        )
        if not force:
            raise ModelMismatchError(
                f"{message}. Extract the features with the model's settings, or pass --force "
                "(force=True) to predict anyway"
            )
        warnings.append(f"{message}; predicting anyway (forced)")
    if missing:
        warnings.append(
            f"{path}: cannot check that these features fit the model: {', '.join(missing)}"
        )
    for warning in warnings:
        logger.warning("%s", warning)
    return warnings
