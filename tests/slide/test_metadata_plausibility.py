"""Metadata values that are no measurement (inf, nan, 0, 1e9) read as unknown, never as data."""

from __future__ import annotations

import numpy as np
import pytest

from histoguard.errors import CorruptSlideError
from histoguard.slide import ArraySlide
from histoguard.slide._openslide_like import plausible_magnification, positive_float


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "0", "-1", "abc", "", None, "1e-320x"])
def test_non_measurements_are_not_positive_floats(value: object) -> None:
    assert positive_float(value) is None


@pytest.mark.parametrize("value", ["0", "-1", "inf", "nan", "1e9", "0.001", "abc", ""])
def test_implausible_magnification_is_unknown(value: str) -> None:
    assert plausible_magnification(value) is None


@pytest.mark.parametrize(("value", "expected"), [("20", 20.0), ("40", 40.0), ("2.5", 2.5)])
def test_plausible_magnification_is_kept(value: str, expected: float) -> None:
    assert plausible_magnification(value) == expected


class _LyingPyramid(ArraySlide):
    """An array slide whose pyramid metadata says what a hostile file can make it say."""

    lie: tuple[float, ...] = ()

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return self.lie


@pytest.mark.parametrize(
    "downsamples",
    [(2.0, 4.0), (1.0, float("inf")), (1.0, float("nan")), (1.0, 0.5), (1.0,), (1.0, 2.0, 3.0)],
)
def test_implausible_level_downsamples_are_refused(downsamples: tuple[float, ...]) -> None:
    _LyingPyramid.lie = downsamples
    with pytest.raises(CorruptSlideError, match="lying.tif"):
        _LyingPyramid(np.zeros((1000, 1000, 3), np.uint8), mpp=0.5, name="lying.tif",
                      min_level_size=512)  # fmt: skip


def test_plausible_pyramid_opens() -> None:
    slide = ArraySlide(np.zeros((1000, 1000, 3), np.uint8), mpp=0.5, min_level_size=300)
    assert slide.level_downsamples[0] == 1.0 and slide.level_count == 3
