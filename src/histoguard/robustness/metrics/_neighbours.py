"""Exact cosine nearest neighbours of every embedding among all others, with whole groups
(slides) excluded.

The robustness metrics ask "which tiles does this tile resemble?", and the answer must not be
"the other tiles of its own slide": those share the patient, the stain batch and the scan, so
they would flood every neighbourhood with the same class and center. The search is exact (a
blocked matrix product and ``torch.topk``): approximate indexes change the metric in ways that
are hard to bound, and an exact search of 100k x 1,024 embeddings takes minutes on a laptop.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch

from histoguard.core._device import check_device
from histoguard.errors import AuditDataError

#: Bytes held per (query, candidate) pair while one block is searched: the float32 similarity
#: and the boolean mask of the query's own group.
_BYTES_PER_PAIR = 5


def nearest_neighbours(
    embeddings: np.ndarray,
    k: int,
    *,
    groups: np.ndarray | None = None,
    candidates: np.ndarray | None = None,
    memory_mb: int = 512,
    device: str = "cpu",
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """The ``k`` most cosine-similar rows of every row, excluding the row itself and its group.

    Rows are L2-normalised here, so any embedding scale works. Queries are processed in blocks
    so that the ``(block, N)`` similarity matrix and its masks stay within ``memory_mb``.
    Ties are broken deterministically: among equal similarities the lower row index ranks
    first, whatever the block size or thread count.

    Args:
        embeddings: ``(N, D)`` embeddings, any float dtype (computed in float32).
        k: neighbours per row, >= 1.
        groups: optional ``(N,)`` group of each row (slide or patient id, any dtype); rows of
            the query's own group are never neighbours. Without it only the query is excluded.
        candidates: optional ``(N,)`` boolean mask of the rows that may be returned as
            neighbours (for example a reference set); every row is still a query.
        memory_mb: budget in MiB for one block of similarities and masks.
        device: torch device for the search (``"cpu"``, ``"cuda"``).

    Returns:
        ``(indices, similarities)``: ``(N, k)`` int64 row indices and ``(N, k)`` float32 cosine
        similarities in [-1, 1], most similar first. Where a row has fewer than ``k`` eligible
        neighbours (small data, a large own group, few candidates) the missing places are
        padded with index ``-1`` and similarity ``-inf``, always at the end of the row.

    Raises:
        AuditDataError: ``embeddings`` is not a finite non-empty 2-d array, a row has zero
            norm (cosine similarity undefined), ``groups``/``candidates`` do not have one
            entry per row, ``k < 1`` or ``memory_mb < 1``.
    """
    if k < 1:
        raise AuditDataError(f"k must be at least 1 neighbour, got {k}")
    if memory_mb < 1:
        raise AuditDataError(f"memory_mb must be at least 1, got {memory_mb}")
    torch_device = torch.device(check_device(device))
    unit = _unit_rows(embeddings).to(torch_device)
    n = unit.shape[0]
    group_codes = None if groups is None else _group_codes(groups, n).to(torch_device)
    excluded_columns = None if candidates is None else _excluded_columns(candidates, n)
    take = min(k, n)
    block = max(1, (memory_mb << 20) // (_BYTES_PER_PAIR * n))
    indices = np.full((n, k), -1, dtype=np.int64)
    similarities = np.full((n, k), -np.inf, dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, n, block):
            stop = min(start + block, n)
            sims = unit[start:stop] @ unit.T
            _exclude(sims, start, group_codes, excluded_columns)
            values, columns = _ordered_topk(sims, take)
            similarities[start:stop, :take] = values.cpu().numpy()
            indices[start:stop, :take] = columns.cpu().numpy()
    indices[np.isneginf(similarities)] = -1
    return indices, similarities


def _unit_rows(embeddings: np.ndarray) -> torch.Tensor:
    x = np.asarray(embeddings)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise AuditDataError(f"embeddings must be a non-empty (N, D) array, got shape {x.shape}")
    tensor = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    if not torch.isfinite(tensor).all():
        raise AuditDataError(
            "embeddings contain NaN or infinity; re-extract them or drop those rows"
        )
    norms = torch.linalg.vector_norm(tensor, dim=1, keepdim=True)
    zero = int((norms == 0).sum())
    if zero:
        raise AuditDataError(
            f"{zero} embeddings are all zeros, so their cosine similarity is undefined; "
            "drop those rows (often blank or failed tiles)"
        )
    return torch.div(tensor, norms)


def _group_codes(groups: np.ndarray, n: int) -> torch.Tensor:
    values = np.asarray(groups)
    if values.shape != (n,):
        raise AuditDataError(f"groups must have one entry per embedding ({n}), got {values.shape}")
    codes = np.unique(values, return_inverse=True)[1].reshape(n)
    return torch.from_numpy(codes.astype(np.int64))


def _excluded_columns(candidates: np.ndarray, n: int) -> torch.Tensor:
    mask = np.asarray(candidates)
    if mask.shape != (n,) or mask.dtype != np.bool_:
        raise AuditDataError(
            f"candidates must be a boolean mask with one entry per embedding ({n}), got "
            f"{mask.dtype} {mask.shape}"
        )
    return torch.from_numpy(np.flatnonzero(~mask))


def _exclude(
    sims: torch.Tensor,
    start: int,
    group_codes: torch.Tensor | None,
    excluded_columns: torch.Tensor | None,
) -> None:
    """Set the similarity of every ineligible (query, column) pair of a block to -inf, in place."""
    rows = torch.arange(sims.shape[0], device=sims.device)
    sims[rows, rows + start] = -torch.inf
    if group_codes is not None:
        query_groups = group_codes[start : start + sims.shape[0], None]
        sims.masked_fill_(query_groups == group_codes[None, :], -torch.inf)
    if excluded_columns is not None:
        sims.index_fill_(1, excluded_columns.to(sims.device), -torch.inf)


def _ordered_topk(sims: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.topk`` with ties resolved by lower column index, in selection and in order.

    ``torch.topk`` leaves the order of equal values unspecified, which matters for duplicated
    embeddings (repeated tiles, augmented copies). A tie straddles the k-th place exactly when
    the (k+1)-th largest value equals the k-th; such rows are rare, so only they are resolved
    exactly, one by one.
    """
    values, columns = torch.topk(sims, min(k + 1, sims.shape[1]), dim=1)
    if values.shape[1] > k:
        kth = values[:, k - 1]
        straddling = (values[:, k] == kth) & torch.isfinite(kth)
        values, columns = values[:, :k], columns[:, :k]
        for row in torch.nonzero(straddling).flatten().tolist():
            eligible = torch.nonzero(sims[row] >= kth[row]).flatten()
            order = torch.sort(sims[row, eligible], descending=True, stable=True).indices[:k]
            columns[row] = eligible[order]
            values[row] = sims[row, columns[row]]
    by_column = torch.argsort(columns, dim=1)
    values, columns = values.gather(1, by_column), columns.gather(1, by_column)
    by_value = torch.sort(values, dim=1, descending=True, stable=True).indices
    return values.gather(1, by_value), columns.gather(1, by_value)
