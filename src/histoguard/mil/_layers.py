"""Masked pooling and the building blocks several MIL models share.

Shapes: ``scores``/``mask`` are ``(B, N)`` or ``(B, N, C)`` with a ``(B, N)`` mask, True = real
instance. Padded entries are replaced with ``torch.where`` (not multiplied by 0) so that even
non-finite padding cannot leak into results or gradients.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _expand(mask: Tensor, like: Tensor) -> Tensor:
    # A (B, N) mask broadcast over any trailing dimensions of `like` (B, N, ...).
    return mask.reshape(mask.shape + (1,) * (like.ndim - 2))


def masked_softmax(scores: Tensor, mask: Tensor) -> Tensor:
    """Softmax over instances (dim 1) of ``scores: (B, N[, C])``; exactly 0 on padding."""
    keep = _expand(mask, scores)
    weights = torch.softmax(scores.masked_fill(~keep, float("-inf")), dim=1)
    return torch.where(keep, weights, torch.zeros_like(weights))


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean over the real instances: ``values: (B, N, D)`` -> ``(B, D)``."""
    keep = _expand(mask, values)
    total = torch.where(keep, values, torch.zeros_like(values)).sum(dim=1)
    return total / mask.sum(dim=1, keepdim=True).to(values.dtype)


def masked_max(values: Tensor, mask: Tensor) -> Tensor:
    """Maximum over the real instances: ``values: (B, N, D)`` -> ``(B, D)``."""
    keep = _expand(mask, values)
    return values.masked_fill(~keep, float("-inf")).amax(dim=1)


def masked_topk_mean(scores: Tensor, mask: Tensor, k: int) -> Tensor:
    """Mean of the ``min(k, n_real)`` largest real scores: ``(B, N, C)`` -> ``(B, C)``."""
    k_eff = min(k, scores.shape[1])
    top = scores.masked_fill(~_expand(mask, scores), float("-inf")).topk(k_eff, dim=1).values
    # Bags with fewer than k real instances average over all of them, whatever the padding.
    n_used = mask.sum(dim=1).clamp(max=k_eff)  # (B,)
    valid = torch.arange(k_eff, device=scores.device)[None, :] < n_used[:, None]  # (B, k)
    total = torch.where(valid[:, :, None], top, torch.zeros_like(top)).sum(dim=1)
    return total / n_used[:, None].to(scores.dtype)


def select_class(per_class: Tensor, classes: Tensor) -> Tensor:
    """Row ``classes[b]`` of each bag: ``per_class: (B, C, N)``, ``classes: (B,)`` -> ``(B, N)``."""
    return per_class[torch.arange(per_class.shape[0], device=per_class.device), classes]


def embedding(in_dim: int, hidden_dim: int, dropout: float) -> nn.Sequential:
    """Per-instance MLP ``(..., in_dim) -> (..., hidden_dim)``: Linear, ReLU, Dropout."""
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout))


class GatedAttention(nn.Module):
    """Gated attention scores (Ilse et al. 2018): ``w^T (tanh(V h) * sigmoid(U h))``.

    Args:
        in_dim: length of each instance embedding h.
        attention_dim: hidden size of the V and U projections.
        n_branches: number of independent score columns (1, or one per class for CLAM-MB).
        dropout: dropout on the gated hidden layer.
    """

    def __init__(self, in_dim: int, attention_dim: int, n_branches: int, dropout: float) -> None:
        super().__init__()
        self.tanh_branch = nn.Sequential(nn.Linear(in_dim, attention_dim), nn.Tanh())
        self.gate = nn.Sequential(nn.Linear(in_dim, attention_dim), nn.Sigmoid())
        self.dropout = nn.Dropout(dropout)
        self.score = nn.Linear(attention_dim, n_branches)

    def forward(self, embeddings: Tensor) -> Tensor:
        """Unnormalised scores: ``embeddings: (B, N, H)`` -> ``(B, N, n_branches)``."""
        gated = self.tanh_branch(embeddings) * self.gate(embeddings)
        scores: Tensor = self.score(self.dropout(gated))
        return scores
