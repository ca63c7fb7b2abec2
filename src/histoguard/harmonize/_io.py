"""Save and load a fitted :class:`Harmonizer`: arrays in safetensors, settings in JSON.

A saved harmoniser is two files in one folder, each written atomically (temporary, fsync,
verified read-back, rename) and never pickled:

* ``harmonizer.json``: format and version, the histoguard version, the settings, the centers
  (which were fitted label-free, and from how many rows);
* ``harmonizer.safetensors``: the float64 arrays (pooled fit, per-center effects, CovBat stage).
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np

from histoguard._version import __version__
from histoguard.core._atomic import atomic_output, write_bytes_atomic
from histoguard.errors import ConfigError
from histoguard.harmonize._harmonizer import CovBatPart, Harmonizer, HarmonizerState

HARMONIZER_JSON = "harmonizer.json"
#: The folder a harmoniser is saved in beside what uses it (a model folder, harmonised features).
HARMONIZER_DIR = "harmonizer"
HARMONIZER_ARRAYS = "harmonizer.safetensors"
HARMONIZER_FORMAT = "histoguard-harmonizer"
_VERSION = 1
_STATE_ARRAYS = ("grand_mean", "var_pooled", "beta", "mean_covariate_effect", "gamma", "delta")
_COVBAT_ARRAYS = tuple(f.name for f in fields(CovBatPart))
_SETTINGS = tuple(f.name for f in fields(Harmonizer) if f.name != "state")


def save_harmonizer(harmonizer: Harmonizer, directory: str | Path) -> None:
    """Write ``harmonizer.json`` and ``harmonizer.safetensors`` into ``directory``.

    Raises:
        ConfigError: the harmoniser is not fitted.
    """
    from safetensors.numpy import load_file, save_file

    state = harmonizer._fitted()
    directory = Path(directory)
    arrays = {name: getattr(state, name) for name in _STATE_ARRAYS}
    if state.covbat is not None:
        arrays |= {f"covbat.{name}": getattr(state.covbat, name) for name in _COVBAT_ARRAYS}
    if state.neutral is not None:
        arrays["neutral"] = state.neutral.astype(np.uint8)
    arrays = {k: np.ascontiguousarray(v, dtype=np.float64) for k, v in arrays.items()}

    def verify(tmp: Path) -> None:
        loaded = load_file(str(tmp))
        if loaded.keys() != arrays.keys() or any(
            not np.array_equal(loaded[k], arrays[k]) for k in arrays
        ):
            raise OSError(f"{directory / HARMONIZER_ARRAYS}: read-back differs from the arrays")

    directory.mkdir(parents=True, exist_ok=True)
    with atomic_output(directory / HARMONIZER_ARRAYS, verify=verify) as tmp:
        save_file(arrays, str(tmp))
    settings = {k: v for k, v in asdict(harmonizer).items() if k in _SETTINGS}
    document = {
        "format": HARMONIZER_FORMAT,
        "version": _VERSION,
        "histoguard_version": __version__,
        "settings": settings,
        "centers": [
            {"name": name, "label_free": name in state.label_free, "n_rows": n}
            for name, n in zip(state.centers, state.n_rows, strict=True)
        ],
        "n_features": int(state.grand_mean.size),
        "n_covariates": int(state.beta.shape[0]),
    }
    text = json.dumps(document, indent=1) + "\n"
    write_bytes_atomic(directory / HARMONIZER_JSON, text.encode())


def load_harmonizer(directory: str | Path) -> Harmonizer:
    """The :class:`Harmonizer` saved in ``directory`` by :func:`save_harmonizer`.

    Raises:
        ConfigError: the files are missing, not a histoguard harmoniser, or inconsistent;
            the message names the file.
    """
    from safetensors.numpy import load_file

    path = Path(directory) / HARMONIZER_JSON
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        if document.get("format") != HARMONIZER_FORMAT or document.get("version") != _VERSION:
            raise ValueError(f"not a {HARMONIZER_FORMAT} v{_VERSION} file")
        arrays = load_file(str(Path(directory) / HARMONIZER_ARRAYS))
        covbat = None
        if "covbat.components" in arrays:
            covbat = CovBatPart(**{n: arrays[f"covbat.{n}"] for n in _COVBAT_ARRAYS})
        centers = document["centers"]
        state = HarmonizerState(
            centers=tuple(str(c["name"]) for c in centers),
            label_free=tuple(str(c["name"]) for c in centers if c["label_free"]),
            n_rows=tuple(int(c["n_rows"]) for c in centers),
            covbat=covbat,
            neutral=arrays["neutral"].astype(bool) if "neutral" in arrays else None,
            **{name: arrays[name] for name in _STATE_ARRAYS},
        )
        if state.gamma.shape != (len(state.centers), int(document["n_features"])):
            raise ValueError("the per-center arrays do not match the centers listed")
        settings = {k: document["settings"][k] for k in _SETTINGS}
        return Harmonizer(**settings, state=state)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ConfigError(
            f"{path}: cannot be read as a histoguard harmoniser ({error}); refit it, or point "
            f"to the folder holding {HARMONIZER_JSON} and {HARMONIZER_ARRAYS}"
        ) from None
