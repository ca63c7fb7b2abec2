"""Saving and loading one trained MIL model: safetensors weights plus a JSON description that
rebuilds it (no pickles) and records the training features' provenance."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from histoguard._version import __version__
from histoguard.core._atomic import atomic_output, write_json_atomic
from histoguard.mil._base import MILModel
from histoguard.mil._harmonized import HarmonizedModel, save_harmonized, with_saved_harmonizer
from histoguard.mil._model_file import check_against_weights, check_finite, read_description
from histoguard.mil._registry import build_model


def save_model(
    model: MILModel,
    directory: Path,
    *,
    labels: Sequence[str],
    provenance: Mapping[str, Any] | None = None,
) -> None:
    """Write ``model.safetensors`` and ``model.json`` (constructor config, class names and the
    training features' provenance: ``encoder``, ``weights_sha256``, ``mpp``, ``tile_size``, as
    far as known; see :func:`~histoguard.mil._provenance.training_provenance`). A
    :class:`~histoguard.mil._harmonized.HarmonizedModel` saves its member so, and its
    harmoniser in ``harmonizer/``."""
    from safetensors.torch import save_file

    from histoguard.core._weights import load_state_dict

    if isinstance(model, HarmonizedModel):
        directory.mkdir(parents=True, exist_ok=True)
        save_harmonized(model, directory)
        model = model.member

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}

    def verify(tmp: Path) -> None:
        loaded = load_state_dict(tmp)
        if loaded.keys() != state.keys() or any(
            not torch.equal(loaded[k], state[k]) for k in state
        ):
            raise OSError(f"{directory}: checkpoint read back differs from the model")

    directory.mkdir(parents=True, exist_ok=True)
    with atomic_output(directory / "model.safetensors", verify=verify) as tmp:
        save_file(state, str(tmp))
    description = {
        "model": model.config(),
        "labels": list(labels),
        "provenance": dict(provenance or {}),
        "histoguard_version": __version__,
    }
    write_json_atomic(directory / "model.json", description)


def load_model(directory: str | Path) -> tuple[MILModel, list[str]]:
    """Rebuild a saved model from ``model.json`` and ``model.safetensors`` (no pickles).

    Checkpoints saved before provenance was recorded load the same way. A folder with a
    ``harmonizer/`` gives a :class:`~histoguard.mil._harmonized.HarmonizedModel`.

    Nothing is allocated from ``model.json`` before it is bounded and matched against the
    weights file's header (see :mod:`~histoguard.mil._model_file`).

    Returns:
        ``(model in eval mode, class names)``.

    Raises:
        ModelFileError: a file is missing, malformed, out of bounds, inconsistent with the
            other, or holds non-finite weights (naming the file and the fix).
    """
    from histoguard.core._weights import load_state_dict

    directory = Path(directory)
    description = read_description(directory)
    check_against_weights(directory, description["model"])
    model = build_model(**description["model"])
    state = load_state_dict(directory / "model.safetensors")
    check_finite(directory / "model.safetensors", state)
    model.load_state_dict(state, strict=True)
    return with_saved_harmonizer(model, directory).eval(), list(description["labels"])
