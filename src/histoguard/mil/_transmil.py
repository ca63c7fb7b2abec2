"""A compact TransMIL (Shao et al. 2021): class token, two attention layers and PPEG."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from histoguard.mil._base import MILModel, MILOutput
from histoguard.mil._nystrom import NystromLayer
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
    description="Compact TransMIL: class token, two self-attention layers (exact or Nyström), PPEG",
    citation=(
        "Shao et al. 2021, TransMIL: Transformer based Correlated Multiple Instance Learning "
        "for Whole Slide Image Classification, NeurIPS"
    ),
)
class TransMIL(MILModel):
    """TransMIL: class token, two pre-norm attention layers with PPEG between them.

    ``attention="exact"`` (the default, and what every model saved before the option loads
    as) uses exact multi-head attention (``torch.nn.MultiheadAttention``, dropout on the
    attention weights), cost quadratic in the bag size. ``attention="nystrom"`` uses Nyström
    attention as the original TransMIL does (:mod:`histoguard.mil._nystrom`: ``n_landmarks``
    landmarks, an iterative pseudo-inverse, a depthwise value convolution, dropout after the
    output projection), cost linear in the bag size. Padded tokens never reach either.

    ``attention`` is the class token's attention to the instances in the last layer, averaged
    over heads and renormalised over the real instances (its weight on itself removed; for
    Nyström the approximation's few negative entries are set to 0 first).
    ``embedding`` is the normalised class token the head reads, ``(B, hidden_dim)``.

    Args:
        in_dim: length D of each instance feature.
        n_classes: number of bag classes C.
        hidden_dim: token size (divisible by ``n_heads``).
        n_heads: attention heads per layer.
        dropout: dropout on the attention weights (exact) or after the attention's output
            projection (Nyström).
        attention: ``"exact"`` or ``"nystrom"``.
        n_landmarks: Nyström landmarks (None: ``hidden_dim // 2``, as in the original).
        pinv_iterations: Nyström pseudo-inverse iterations (6, as in the original).

    Raises:
        ValueError: ``hidden_dim`` not divisible by ``n_heads``, an unknown ``attention``, or
            Nyström settings below 1.
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
        attention: Literal["exact", "nystrom"] = "exact",
        n_landmarks: int | None = None,
        pinv_iterations: int = 6,
    ) -> None:
        if hidden_dim % n_heads:
            raise ValueError(f"hidden_dim {hidden_dim} is not divisible by n_heads {n_heads}")
        if attention not in ("exact", "nystrom"):
            raise ValueError(f"attention must be 'exact' or 'nystrom', got {attention!r}")
        settings: dict[str, object] = {}
        if attention == "nystrom":  # exact models keep the config they always had
            landmarks = hidden_dim // 2 if n_landmarks is None else n_landmarks
            settings = {
                "attention": attention, "n_landmarks": landmarks,
                "pinv_iterations": pinv_iterations,
            }  # fmt: skip
        super().__init__(
            in_dim, n_classes, hidden_dim=hidden_dim, n_heads=n_heads, dropout=dropout, **settings
        )
        self.embed = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU())
        self.cls_token = nn.Parameter(torch.randn(1, 1, hidden_dim))
        self.nystrom = attention == "nystrom"
        self.layer1: nn.Module
        self.layer2: nn.Module
        if self.nystrom:
            nystrom = (hidden_dim, n_heads, settings["n_landmarks"], pinv_iterations, dropout)
            self.layer1 = NystromLayer(*nystrom)  # type: ignore[arg-type]
            self.ppeg = _PPEG(hidden_dim)
            self.layer2 = NystromLayer(*nystrom)  # type: ignore[arg-type]
        else:
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
        # Exact layers take the padding (True = ignore), Nyström layers the real tokens.
        side = keep if self.nystrom else ~keep
        tokens, _ = self.layer1(tokens, side)
        tokens = torch.cat([tokens[:, :1], self.ppeg(tokens[:, 1:], mask)], dim=1)
        tokens, weights = self.layer2(tokens, side)
        cls_row = weights if self.nystrom else weights[:, 0]  # (B, 1 + N)
        cls_to_instances = torch.where(mask, cls_row[:, 1:], weights.new_zeros(()))
        if self.nystrom:
            cls_to_instances = cls_to_instances.clamp_min(0)
        # The clamp only matters in training, where attention dropout may zero a whole row.
        attention = cls_to_instances / cls_to_instances.sum(dim=1, keepdim=True).clamp_min(1e-12)
        pooled = self.norm(tokens[:, 0])
        return MILOutput(logits=self.head(pooled), attention=attention, embedding=pooled)
