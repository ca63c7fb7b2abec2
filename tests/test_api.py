"""The public API is explicit, sorted and importable without the heavy libraries."""

from __future__ import annotations

import pytest

import histoguard
import histoguard.augment
import histoguard.encoders
import histoguard.errors
import histoguard.features
import histoguard.harmonize
import histoguard.mil
import histoguard.report
import histoguard.robustness
import histoguard.slide
import histoguard.stain
import histoguard.testing
import histoguard.uncertainty


@pytest.mark.parametrize(
    "module",
    [
        histoguard,
        histoguard.errors,
        histoguard.slide,
        histoguard.augment,
        histoguard.encoders,
        histoguard.features,
        histoguard.harmonize,
        histoguard.mil,
        histoguard.stain,
        histoguard.robustness,
        histoguard.uncertainty,
        histoguard.testing,
        histoguard.report,
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
            assert getattr(histoguard.errors, name) is obj, f"{name} is not in histoguard.errors"


def test_every_exception_lives_in_errors() -> None:
    """Each exception class defined anywhere in the package is (re-exported from) the errors
    module, and the hierarchy drawn at the top of errors.py names every one of them."""
    import importlib
    import pkgutil

    drawing = histoguard.errors.__doc__ or ""
    for info in pkgutil.walk_packages(histoguard.__path__, "histoguard."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for obj in vars(module).values():
            ours = isinstance(obj, type) and obj.__module__.startswith("histoguard")
            if ours and issubclass(obj, Exception):
                assert obj.__module__ == "histoguard.errors", f"{obj.__qualname__}, {info.name}"
    for name in histoguard.errors.__all__:
        assert name in drawing, f"{name} is missing from the hierarchy drawn in errors.py"


def test_slide_errors_pickle_intact() -> None:
    import pickle

    error = histoguard.MissingMppError("a.svs", "no mpp", "pass --mpp-override")
    clone = pickle.loads(pickle.dumps(error))
    assert type(clone) is histoguard.MissingMppError and str(clone) == str(error)
