"""Synthetic embeddings with known center effects and known biology."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pytest


@dataclass(frozen=True)
class Centers:
    """Rows of three centers: features = signal + class effect + center shift and scale.

    Attributes:
        x: (N, D) features.
        batch: (N,) center names.
        y: (N,) binary class labels (the biology).
        class_effect: (D,) what class 1 adds to a row.
    """

    x: npt.NDArray[np.float64]
    batch: npt.NDArray[np.str_]
    y: npt.NDArray[np.int64]
    class_effect: npt.NDArray[np.float64]


def make_centers(
    seed: int = 0,
    sizes: tuple[int, ...] = (60, 80, 50),
    n_features: int = 64,
    class_share: tuple[float, ...] = (0.5, 0.3, 0.6),
) -> Centers:
    """Centers of ``sizes`` rows whose class-1 share differs (so the batch and the class are
    correlated, as in real cohorts), each with its own additive shift and feature scales."""
    rng = np.random.default_rng(seed)
    class_effect = rng.normal(0.0, 1.0, n_features)
    xs, names, ys = [], [], []
    for c, (n, share) in enumerate(zip(sizes, class_share, strict=True)):
        y = (rng.random(n) < share).astype(np.int64)
        shift = rng.normal(0.0, 2.0, n_features)
        scale = rng.uniform(0.5, 2.0, n_features)
        noise = rng.normal(0.0, 1.0, (n, n_features))
        xs.append(y[:, None] * class_effect + shift + scale * noise)
        names += [f"center{c}"] * n
        ys.append(y)
    return Centers(np.vstack(xs), np.array(names), np.concatenate(ys), class_effect)


@pytest.fixture
def centers() -> Centers:
    return make_centers()
