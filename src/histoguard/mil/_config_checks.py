"""Checks of training settings made when they are loaded, before a run writes anything:
the model is registered and takes the given keywords, each value has its setting's type."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from histoguard.errors import ConfigError, closest_name
from histoguard.mil._registry import MODELS, build_model


def check_model_settings(model: str, model_kwargs: Mapping[str, Any]) -> None:
    """Check that ``model`` is registered and can be built with ``model_kwargs``.

    Builds the model once on a small stand-in input size, so a typo or an invalid value
    fails at configuration time rather than after outputs were written.

    Raises:
        ConfigError: an unknown model (listing the registered ones and the closest match), a
            keyword the model does not take (listing those it takes), or an invalid value.
    """
    import inspect

    info = MODELS.check(model, field="model")
    if not isinstance(model_kwargs, Mapping):
        raise ConfigError(
            f"model_kwargs must be a mapping of {model} settings, got {model_kwargs!r}"
        )
    parameters = inspect.signature(info.cls.__init__).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        accepted = sorted(set(parameters) - {"self", "in_dim", "n_classes"})
        for key in model_kwargs:
            if key not in accepted:
                raise ConfigError(
                    f"model_kwargs: {model} takes no setting {key!r}."
                    f"{did_you_mean(str(key), accepted)} Accepted: {accepted}"
                )
    try:
        build_model(model, in_dim=_PROBE_DIM, n_classes=2, **model_kwargs)
    except (TypeError, ValueError) as error:
        raise ConfigError(
            f"model_kwargs {dict(model_kwargs)} do not fit {model}: {error}"
        ) from None


#: Feature size of the stand-in model :func:`check_model_settings` builds.
_PROBE_DIM = 16

_TYPE_NAMES: dict[type, str] = {
    int: "an integer", float: "a number", bool: "true or false", str: "a string",
    Path: "a path", dict: "a mapping",
}  # fmt: skip


def did_you_mean(name: str, known: Sequence[str]) -> str:
    """A sentence suggesting the closest of ``known`` to ``name``, or "" when none is close."""
    close = closest_name(name, known)
    return f" Did you mean {close!r} for {name!r}?" if close else ""


def checked_type(name: str, value: Any, where: str) -> Any:
    """``value`` as the type of setting ``name`` (paths from strings, ints as floats), or a
    ConfigError naming the setting, the value and the expected type."""
    kind = _FIELD_KINDS.get(name)
    if kind is None or (value is None and name in _OPTIONAL):
        return value  # a setting without a type entry is left to TrainConfig
    if kind is Path and isinstance(value, (str, Path)):
        return Path(value)
    if kind is dict and isinstance(value, dict):
        return value
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind is float and isinstance(value, str):
        try:  # PyYAML reads 2e-4 (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if kind in (int, str, bool) and type(value) is kind:
        return value
    expected = _TYPE_NAMES[kind]
    if name in _OPTIONAL:
        expected += " or null"
    raise ConfigError(f"{where}{name}: expected {expected}, got {value!r} ({type(value).__name__})")


_FIELD_KINDS: dict[str, type] = {
    "cohort": Path, "features": Path, "out": Path, "model": str, "model_kwargs": dict,
    "split": str, "k": int, "epochs": int, "patience": int, "lr": float, "weight_decay": float,
    "max_instances": int, "class_balanced": bool, "seed": int, "threshold": float, "n_boot": int,
    "seeds": int, "calibration_fraction": float, "alpha": float, "conformal_score": str,
    "mondrian": str, "calibrator": str, "ood_score": str, "ood_k": int, "ood_alpha": float,
    "drift_alpha": float, "harmonize": str, "harmonize_parametric": bool,
    "harmonize_tiles": int, "harmonize_min_slides": int, "adversarial_weight": float,
    "adversarial_unlabelled": bool, "contrastive_weight": float,
    "contrastive_temperature": float, "bags_per_step": int, "pad_batches": bool,
}  # fmt: skip
_OPTIONAL = frozenset({"max_instances"})
