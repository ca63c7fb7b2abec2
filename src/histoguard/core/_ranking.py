"""Ranks of per-tile scores, shared by the rooms that list tiles by attention."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def descending_ranks(scores: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """``(N,)`` int64 rank of each score: 1 for the highest, N for the lowest; ties keep their
    order, non-finite scores rank last."""
    values = np.asarray(scores, dtype=np.float64)
    values = np.where(np.isfinite(values), values, -np.inf)
    ranks = np.empty(len(values), dtype=np.int64)
    ranks[np.argsort(-values, kind="stable")] = np.arange(1, len(values) + 1)
    return ranks
