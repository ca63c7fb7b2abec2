"""A compact TransMIL (Shao et al. 2021): class token, two attention layers and PPEG."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from histoguard.mil._base import MILModel, MILOutput
from histoguard.mil._registry import register_model


class _AttentionLayer(nn.Module):
    """TransMIL's ``TransLayer``: pre-norm residual self-attention (no feed-forward block)."""

    def __init__(self, dim: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, n_heads, dropout=dropout, batch_first=True)

    def forward(self, tokens: Tensor, padding: Tensor) -> tuple[Tensor, Tensor]:
        """``tokens: (B, T, H)``, ``padding: (B, T)`` True = ignore -> tokens ``(B, T, H)``
        and the head-averaged attention weights ``(B, T, T)`` (after attention dropout)."""
        normed = self.norm(tokens)
        attended, weights = self.attention(
            normed, normed, normed, key_padding_mask=padding, need_weights=True
        )
        assert weights is not None  # always returned with need_weights=True
        return tokens + attended, weights


class _PPEG(nn.Module):
    """Pyramid position encoding generator: depthwise 7x7, 5x5 and 3x3 convolutions.

    Each bag's real tokens are laid out row by row on the smallest square grid that holds
    them, the rest of the grid zero, so a bag's encoding never depends on its batch's padding.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(dim, dim, size, padding=size // 2, groups=dim) for size in (7, 5, 3)
        )

    def forward(self, tokens: Tensor, mask: Tensor) -> Tensor:
        """``tokens: (B, N, H)`` instance tokens, ``mask: (B, N)`` -> ``(B, N, H)``."""
        encoded = torch.zeros_like(tokens)
        for b in range(tokens.shape[0]):
            real = mask[b].nonzero().squeeze(1)
            side = math.ceil(math.sqrt(real.numel()))
            grid = tokens.new_zeros(side * side, tokens.shape[2])
            grid[: real.numel()] = tokens[b, real]
            grid = grid.T.reshape(1, -1, side, side)
            grid = grid + sum((conv(grid) for conv in self.convs), torch.zeros_like(grid))
            encoded[b, real] = grid.reshape(tokens.shape[2], -1).T[: real.numel()]
        return encoded


@register_model(
    "transmil",
    description="Compact TransMIL: class token, two self-attention layers, PPEG",
    citation=(
        "Shao et al. 2021, TransMIL: Transformer based Correlated Multiple Instance Learning "
        "for Whole Slide Image Classification, NeurIPS"
    ),
)
class TransMIL(MILModel):
    """TransMIL with exact multi-head attention (``torch.nn.MultiheadAttention``) instead of
    Nyström attention, and padded tokens excluded through ``key_padding_mask``.

    ``attention`` is the class token's attention to the instances in the last layer, averaged
    over heads and renormalised over the real instances (its weight on itself removed).
    ``embedding`` is the normalised class token the head reads, ``(B, hidden_dim)``.

    Args:
        in_dim: length D of each instance feature.
        n_classes: number of bag classes C.
        hidden_dim: token size (divisible by ``n_heads``).
        n_heads: attention heads per layer.
        dropout: dropout on the attention weights.
    """

    #: PPEG's convolutions see the instances' order: reordering a bag changes its output.
    permutation_invariant = False

    def __init__(
        self,
        in_dim: int,
        n_classes: int,
        *,
        hidden_dim: int = 128,
        n_heads: int = 4,
        dropout: float = 0.1,
    ) -> None:
        if hidden_dim % n_heads:
            raise ValueError(f"hidden_dim {hidden_dim} is not divisible by n_heads {n_heads}")
        super().__init__(in_dim, n_classes, hidden_dim=hidden_dim, n_heads=n_heads, dropout=dropout)
        self.embed = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU())
        self.cls_token = nn.Parameter(torch.randn(1, 1, hidden_dim))
        self.layer1 = _AttentionLayer(hidden_dim, n_heads, dropout)
        self.ppeg = _PPEG(hidden_dim)
        self.layer2 = _AttentionLayer(hidden_dim, n_heads, dropout)
        self.norm = nn.LayerNorm(hidden_dim)
        self.head = nn.Linear(hidden_dim, n_classes)
        self.embedding_dim = hidden_dim

    def _forward(self, features: Tensor, mask: Tensor) -> MILOutput:
        batch = features.shape[0]
        keep = torch.cat([mask.new_ones(batch, 1), mask], dim=1)  # (B, 1 + N), cls kept
        tokens = torch.cat([self.cls_token.expand(batch, -1, -1), self.embed(features)], dim=1)
        tokens, _ = self.layer1(tokens, ~keep)
        tokens = torch.cat([tokens[:, :1], self.ppeg(tokens[:, 1:], mask)], dim=1)
        tokens, weights = self.layer2(tokens, ~keep)
        cls_to_instances = torch.where(mask, weights[:, 0, 1:], weights.new_zeros(()))
        # The clamp only matters in training, where attention dropout may zero a whole row.
        attention = cls_to_instances / cls_to_instances.sum(dim=1, keepdim=True).clamp_min(1e-12)
        pooled = self.norm(tokens[:, 0])
        return MILOutput(logits=self.head(pooled), attention=attention, embedding=pooled)
