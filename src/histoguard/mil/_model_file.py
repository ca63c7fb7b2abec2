"""Checks of a saved model folder made before a model is built from it.

``model.json`` is untrusted input: a ``hidden_dim`` of 1e9 would make the constructor allocate
hundreds of gigabytes before the weights are even read. So the description is parsed and bounded
first, the model is then built on PyTorch's ``meta`` device (shapes only, no memory) and its
tensors compared with the shapes the safetensors header declares; only a description that
matches the weights on disk is built for real, and the loaded weights must be finite.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from histoguard.core._weights import check_safetensors, first_non_finite
from histoguard.errors import ModelFileError, UnknownNameError, WeightsError
from histoguard.mil._registry import build_model

#: Largest ``model.json`` read, in bytes; a real one is well under a kilobyte.
MAX_DESCRIPTION_BYTES = 1 << 20
#: Largest integer model setting (a width, a head or layer count, ``in_dim``, ``n_classes``).
MAX_SETTING = 1 << 16
_RETRAIN = "re-save it with `histoguard train`, or point --model at an intact train output"


def read_description(directory: Path) -> dict[str, Any]:
    """``model.json`` of ``directory``, parsed and checked for shape and bounds.

    Returns:
        The description: ``model`` (``name``, ``in_dim``, ``n_classes`` and the model's
        settings) and ``labels`` (``n_classes`` class names), plus what else it records.

    Raises:
        ModelFileError: the file is missing, too large, not JSON, lacks a field, or holds a
            setting that is not finite or outside 0-:data:`MAX_SETTING`.
    """
    path = directory / "model.json"
    if not path.is_file():
        raise ModelFileError(f"{path}: no model description; {_RETRAIN}")
    if path.stat().st_size > MAX_DESCRIPTION_BYTES:
        raise ModelFileError(
            f"{path}: {path.stat().st_size} bytes, more than a model description can need "
            f"({MAX_DESCRIPTION_BYTES}); {_RETRAIN}"
        )
    try:
        description = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise ModelFileError(f"{path}: not valid JSON ({error}); {_RETRAIN}") from None
    model = description.get("model") if isinstance(description, dict) else None
    if not isinstance(model, dict) or not isinstance(model.get("name"), str):
        raise ModelFileError(f"{path}: no 'model' object with a 'name'; {_RETRAIN}")
    for key in ("in_dim", "n_classes"):
        value = model.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ModelFileError(
                f"{path}: model.{key} is {value!r}, not a positive integer; {_RETRAIN}"
            )
    for key, value in model.items():
        _check_setting(path, f"model.{key}", value)
    labels = description.get("labels")
    if (
        not isinstance(labels, list)
        or not all(isinstance(label, str) for label in labels)
        or len(labels) != model["n_classes"]
    ):
        raise ModelFileError(
            f"{path}: labels {labels!r} are not {model['n_classes']} class names; {_RETRAIN}"
        )
    checked: dict[str, Any] = description
    return checked


def _check_setting(path: Path, key: str, value: Any) -> None:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if isinstance(value, int):
        if not 0 <= value <= MAX_SETTING:
            raise ModelFileError(
                f"{path}: {key} = {value} is outside 0-{MAX_SETTING}; no MIL model needs it; "
                f"{_RETRAIN}"
            )
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ModelFileError(f"{path}: {key} = {value} is not finite; {_RETRAIN}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_setting(path, f"{key}[{i}]", item)
    else:
        raise ModelFileError(f"{path}: {key} = {value!r} is not a model setting; {_RETRAIN}")


def check_against_weights(directory: Path, settings: dict[str, Any]) -> None:
    """Build the model on the ``meta`` device and compare its tensors with the weights file's
    header: the same names, each of the same shape.

    Raises:
        ModelFileError: the weights file is missing or malformed, the model name is unknown,
            the settings do not build, or a tensor is missing, extra or of another shape.
    """
    weights = directory / "model.safetensors"
    if not weights.is_file():
        raise ModelFileError(f"{weights}: no weights file; {_RETRAIN}")
    try:
        shapes = check_safetensors(weights)
    except WeightsError as error:
        raise ModelFileError(f"{error}; {_RETRAIN}") from None
    try:
        with torch.device("meta"):
            probe = build_model(**settings)
    except (UnknownNameError, TypeError, ValueError, RuntimeError) as error:
        raise ModelFileError(
            f"{directory / 'model.json'}: the model settings do not build ({error}); {_RETRAIN}"
        ) from None
    expected = {name: tuple(t.shape) for name, t in probe.state_dict().items()}
    missing, extra = sorted(expected.keys() - shapes.keys()), sorted(shapes.keys() - expected)
    if missing or extra:
        raise ModelFileError(
            f"{weights}: does not match model.json: missing tensors {missing[:5]}, unexpected "
            f"tensors {extra[:5]}; {_RETRAIN}"
        )
    for name, shape in expected.items():
        if shapes[name] != shape:
            raise ModelFileError(
                f"{weights}: tensor {name!r} has shape {list(shapes[name])} but model.json "
                f"describes {list(shape)}; {_RETRAIN}"
            )


def check_finite(weights: Path, state: dict[str, torch.Tensor]) -> None:
    """Raise when a floating-point tensor of ``state`` holds NaN or infinity.

    Raises:
        ModelFileError: naming the file and the first non-finite tensor.
    """
    name = first_non_finite(state)
    if name is not None:
        raise ModelFileError(
            f"{weights}: tensor {name!r} holds NaN or infinite values; a model with them "
            f"predicts NaN; {_RETRAIN}"
        )
