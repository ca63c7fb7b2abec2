"""Exact cosine neighbour search: equal to brute force, groups excluded, ties and padding."""

from __future__ import annotations

import numpy as np
import pytest

from histoguard.errors import AuditDataError
from histoguard.robustness.metrics._neighbours import nearest_neighbours


def brute_force(
    x: np.ndarray, k: int, groups: np.ndarray | None = None, candidates: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Float64 reference: full similarity matrix, ineligible pairs removed, sorted by
    (similarity descending, index ascending)."""
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = unit.astype(np.float64) @ unit.T.astype(np.float64)
    n = len(x)
    eligible = ~np.eye(n, dtype=bool)
    if groups is not None:
        eligible &= groups[:, None] != groups[None, :]
    if candidates is not None:
        eligible &= candidates[None, :]
    indices = np.full((n, k), -1)
    values = np.full((n, k), -np.inf)
    for row in range(n):
        cols = np.flatnonzero(eligible[row])
        order = np.lexsort((cols, -sims[row, cols]))[:k]
        indices[row, : len(order)] = cols[order]
        values[row, : len(order)] = sims[row, cols[order]]
    return indices, values


def assert_matches_reference(
    x: np.ndarray, indices: np.ndarray, sims: np.ndarray, reference: tuple[np.ndarray, np.ndarray]
) -> None:
    """Same neighbours as brute force, up to the order of float32 near-ties.

    float32 and float64 similarities can swap two neighbours whose similarities differ by
    ~1e-7; the check is therefore that every returned neighbour has the float64 similarity of
    the reference neighbour at its rank, that no row repeats a neighbour, and that the indices
    agree everywhere but at a handful of such near-ties.
    """
    ref_indices, ref_sims = reference
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    true_sims = np.einsum("nd,nkd->nk", unit.astype(np.float64), unit[indices].astype(np.float64))
    np.testing.assert_allclose(true_sims, ref_sims, atol=1e-5)
    np.testing.assert_allclose(sims, ref_sims, atol=1e-5)
    assert all(len(set(row)) == len(row) for row in indices.tolist())
    assert np.mean(indices != ref_indices) < 1e-3


@pytest.fixture(scope="module")
def gaussian() -> np.ndarray:
    """3,000 x 16 embeddings with random scales (the search must normalise them itself)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 16)) * rng.uniform(0.1, 10, size=(3000, 1))
    return x.astype(np.float32)


def test_equals_brute_force_without_groups(gaussian: np.ndarray) -> None:
    indices, sims = nearest_neighbours(gaussian, 7)
    assert indices.dtype == np.int64 and sims.dtype == np.float32
    assert indices.shape == sims.shape == (3000, 7)
    assert_matches_reference(gaussian, indices, sims, brute_force(gaussian, 7))
    assert not (indices == np.arange(3000)[:, None]).any()


def test_equals_brute_force_with_groups_in_small_blocks(gaussian: np.ndarray) -> None:
    groups = np.random.default_rng(1).integers(0, 40, len(gaussian)).astype(str)
    # 1 MiB holds ~70 query rows of 3,000 candidates: the search runs in ~43 blocks.
    indices, sims = nearest_neighbours(gaussian, 12, groups=groups, memory_mb=1)
    assert_matches_reference(gaussian, indices, sims, brute_force(gaussian, 12, groups=groups))
    assert not (groups[indices] == groups[:, None]).any()
    whole_indices, whole_sims = nearest_neighbours(gaussian, 12, groups=groups, memory_mb=512)
    np.testing.assert_array_equal(indices, whole_indices)
    np.testing.assert_array_equal(sims, whole_sims)


def test_candidates_restrict_the_neighbours(gaussian: np.ndarray) -> None:
    candidates = np.zeros(len(gaussian), dtype=bool)
    candidates[::3] = True
    indices, sims = nearest_neighbours(gaussian, 5, candidates=candidates)
    reference = brute_force(gaussian, 5, candidates=candidates)
    assert_matches_reference(gaussian, indices, sims, reference)
    assert candidates[indices].all()


def test_ties_go_to_the_lower_index_in_selection_and_order() -> None:
    # Rows 0-5 are one vector repeated, so every query among them sees five exact ties.
    rng = np.random.default_rng(2)
    x = np.concatenate([np.tile([[1.0, 2.0, 3.0]], (6, 1)), rng.normal(size=(20, 3))])
    indices, sims = nearest_neighbours(x.astype(np.float32), 3, memory_mb=1)
    np.testing.assert_array_equal(indices[0], [1, 2, 3])
    np.testing.assert_array_equal(indices[4], [0, 1, 2])
    np.testing.assert_allclose(sims[:6], 1.0, atol=1e-6)


def test_missing_neighbours_are_padded_at_the_end() -> None:
    x = np.random.default_rng(3).normal(size=(6, 4)).astype(np.float32)
    groups = np.array(["a", "a", "a", "a", "b", "c"])
    indices, sims = nearest_neighbours(x, 4, groups=groups)
    # A query of group "a" has only the two rows of "b" and "c" left.
    assert set(indices[0, :2]) == {4, 5}
    np.testing.assert_array_equal(indices[0, 2:], [-1, -1])
    assert np.isneginf(sims[0, 2:]).all() and np.isfinite(sims[0, :2]).all()
    # k larger than the data: pads instead of failing.
    indices, sims = nearest_neighbours(x, 10)
    assert (indices[:, :5] >= 0).all() and (indices[:, 5:] == -1).all()
    assert np.isneginf(sims[:, 5:]).all()


@pytest.mark.parametrize(
    ("embeddings", "kwargs", "match"),
    [
        (np.zeros((0, 4)), {}, "non-empty"),
        (np.array([[1.0, 0.0], [0.0, 0.0]]), {}, "all zeros"),
        (np.array([[1.0, np.nan], [0.0, 1.0]]), {}, "NaN"),
        (np.eye(3), {"k": 0}, "at least 1"),
        (np.eye(3), {"groups": np.array(["a", "b"])}, "one entry per embedding"),
        (np.eye(3), {"candidates": np.array([1, 0, 1])}, "boolean mask"),
    ],
)
def test_bad_input_is_named(embeddings: np.ndarray, kwargs: dict[str, object], match: str) -> None:
    k = kwargs.pop("k", 1)
    with pytest.raises(AuditDataError, match=match):
        nearest_neighbours(embeddings, k, **kwargs)  # type: ignore[arg-type]
