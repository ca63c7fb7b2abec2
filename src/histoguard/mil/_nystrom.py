"""Nyström self-attention (Xiong et al. 2021) as the original TransMIL uses it.

The original TransMIL (Shao et al. 2021, github.com/szc19990412/TransMIL) builds each layer on
lucidrains' ``NystromAttention`` (``num_landmarks = dim // 2``, ``pinv_iterations = 6``,
``residual = True``, dropout 0.1 after the output projection). This module follows that
algorithm: the sequence is padded at the front with zeros to a multiple of the landmark count
``m`` (unmasked, as there), landmarks are the means of ``m`` consecutive segments of queries
and keys, and softmax attention is approximated by
``softmax(Q K_m^T) pinv(softmax(Q_m K_m^T)) softmax(Q_m K^T) V`` with an iterative
Moore-Penrose pseudo-inverse, plus a depthwise convolution of the values along the sequence.
Cost per layer: ``O(n m d)`` time and ``O(n m)`` memory for ``n`` tokens, linear in the bag
size instead of the ``O(n^2)`` of exact attention.

One difference, so that a bag's output never depends on its batch: the pseudo-inverse's
starting scale (the largest row and column sums) is taken per bag, where the original takes it
over the whole batch; with one bag per batch the two are the same.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

#: Length of the depthwise convolution over the values (the original's ``residual_conv_kernel``).
RESIDUAL_KERNEL = 33


def iterative_pinv(matrix: Tensor, iterations: int) -> Tensor:
    """Moore-Penrose pseudo-inverse of ``matrix: (B, h, m, m)`` by the iteration of Razavi et
    al. 2014 (as in Nyströmformer), each bag ``b`` started from
    ``matrix[b]^T / (max row sum x max column sum)`` of its absolute values."""
    magnitude = matrix.abs()
    col = magnitude.sum(dim=-1).amax(dim=(1, 2), keepdim=True)  # (B, 1, 1)
    row = magnitude.sum(dim=-2).amax(dim=(1, 2), keepdim=True)
    z = matrix.transpose(-1, -2) / (col * row)[..., None]
    identity = torch.eye(matrix.shape[-1], dtype=matrix.dtype, device=matrix.device)
    for _ in range(iterations):
        xz = matrix @ z
        z = 0.25 * z @ (13 * identity - xz @ (15 * identity - xz @ (7 * identity - xz)))
    return z


class NystromAttention(nn.Module):
    """Multi-head Nyström self-attention over ``(B, n, dim)`` tokens of unpadded bags.

    Args:
        dim: token size (divisible by ``n_heads``).
        n_heads: attention heads.
        n_landmarks: landmarks ``m`` (segment means of queries and keys).
        pinv_iterations: iterations of :func:`iterative_pinv`.
        dropout: dropout after the output projection.
    """

    def __init__(
        self, dim: int, n_heads: int, n_landmarks: int, pinv_iterations: int, dropout: float
    ) -> None:
        super().__init__()
        if n_landmarks < 1 or pinv_iterations < 1:
            raise ValueError(
                f"need n_landmarks >= 1 and pinv_iterations >= 1, got {n_landmarks}, "
                f"{pinv_iterations}"
            )
        self.n_heads, self.n_landmarks, self.pinv_iterations = n_heads, n_landmarks, pinv_iterations
        self.scale = (dim // n_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Sequential(nn.Linear(dim, dim), nn.Dropout(dropout))
        self.residual = nn.Conv2d(
            n_heads, n_heads, (RESIDUAL_KERNEL, 1), padding=(RESIDUAL_KERNEL // 2, 0),
            groups=n_heads, bias=False,
        )  # fmt: skip

    def forward(self, tokens: Tensor, *, query_row: int | None = None) -> tuple[Tensor, Tensor]:
        """``tokens: (B, n, dim)`` -> attended tokens ``(B, n, dim)`` and, for token
        ``query_row`` (None: none), its approximate attention to the ``n`` tokens averaged
        over heads, ``(B, n)`` (``(B, 0)`` without ``query_row``)."""
        batch, n, dim = tokens.shape
        m = self.n_landmarks
        pad = -n % m
        if pad:  # zeros at the front, as in the original (they project to zero keys and values)
            tokens = nn.functional.pad(tokens, (0, 0, pad, 0))
        total = n + pad
        q, k, v = (
            t.reshape(batch, total, self.n_heads, -1).transpose(1, 2)
            for t in self.qkv(tokens).chunk(3, dim=-1)
        )  # (B, h, total, d) each
        q = q * self.scale
        # Landmarks: means of m consecutive segments of total / m tokens.
        q_land = q.reshape(*q.shape[:2], m, -1, q.shape[-1]).mean(dim=3)  # (B, h, m, d)
        k_land = k.reshape(*k.shape[:2], m, -1, k.shape[-1]).mean(dim=3)
        attn1 = (q[:, :, pad:] @ k_land.transpose(-1, -2)).softmax(dim=-1)  # real queries only
        attn2 = (q_land @ k_land.transpose(-1, -2)).softmax(dim=-1)
        attn3 = (q_land @ k.transpose(-1, -2)).softmax(dim=-1)  # (B, h, m, total)
        left = attn1 @ iterative_pinv(attn2, self.pinv_iterations)  # (B, h, n, m)
        # oneDNN's depthwise convolution in channels-last made a training step ~12 % faster.
        residual = self.residual(v.contiguous(memory_format=torch.channels_last))
        attended = left @ (attn3 @ v) + residual[:, :, pad:]  # (B, h, n, d)
        merged = self.out(attended.transpose(1, 2).reshape(batch, n, dim))
        if query_row is None:
            return merged, merged.new_zeros(batch, 0)
        row = (left[:, :, query_row : query_row + 1] @ attn3[..., pad:]).mean(dim=1)[:, 0]
        return merged, row


class NystromLayer(nn.Module):
    """TransMIL's ``TransLayer`` on :class:`NystromAttention`: pre-norm residual attention.

    Bags of a padded batch are attended one at a time over their real tokens, so a bag's
    result never depends on the batch's padding; an unpadded batch is attended at once.
    """

    def __init__(
        self, dim: int, n_heads: int, n_landmarks: int, pinv_iterations: int, dropout: float
    ) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attention = NystromAttention(dim, n_heads, n_landmarks, pinv_iterations, dropout)

    def forward(self, tokens: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
        """``tokens: (B, T, H)``, ``keep: (B, T)`` True = real token (token 0 is the class
        token) -> tokens ``(B, T, H)`` and the class token's approximate attention to every
        token, head-averaged, ``(B, T)`` (0 on padding; entries may be slightly negative)."""
        if bool(keep.all()):
            attended, row = self.attention(self.norm(tokens), query_row=0)
            return tokens + attended, row
        out, rows = tokens.clone(), tokens.new_zeros(keep.shape)
        for b in range(tokens.shape[0]):
            real = keep[b].nonzero().squeeze(1)
            attended, row = self.attention(self.norm(tokens[b, real][None]), query_row=0)
            out[b, real] = tokens[b, real] + attended[0]
            rows[b, real] = row[0]
        return out, rows
