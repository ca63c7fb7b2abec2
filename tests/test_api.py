"""The public API is explicit, sorted and importable without the heavy libraries."""

from __future__ import annotations

import subprocess
import sys

import pytest

import histoguard
import histoguard.encoders
import histoguard.features
import histoguard.mil
import histoguard.robustness
import histoguard.slide
import histoguard.stain
import histoguard.testing


@pytest.mark.parametrize(
    "module",
    [
        histoguard,
        histoguard.slide,
        histoguard.encoders,
        histoguard.features,
        histoguard.mil,
        histoguard.stain,
        histoguard.robustness,
        histoguard.testing,
    ],
)
def test_all_is_sorted_and_complete(module: object) -> None:
    names = module.__all__  # type: ignore[attr-defined]
    # Ruff's isort-style order: CONSTANTS, then Classes, then functions.
    assert names == sorted(names, key=lambda n: (not n.isupper(), not n[:1].isupper(), n))
    for name in names:
        assert hasattr(module, name), name


def test_exceptions_form_one_hierarchy() -> None:
    for name in histoguard.__all__:
        obj = getattr(histoguard, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, histoguard.HistoguardError), name


def test_import_is_light() -> None:
    code = (
        "import sys, histoguard; "
        "print(sorted(m for m in ('openslide', 'tiffslide', 'h5py', 'tifffile', 'torch', 'rich') "
        "if m in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert loaded.stdout.strip() == "[]"


def test_slide_errors_pickle_intact() -> None:
    import pickle

    error = histoguard.MissingMppError("a.svs", "no mpp", "pass --mpp-override")
    clone = pickle.loads(pickle.dumps(error))
    assert type(clone) is histoguard.MissingMppError and str(clone) == str(error)
