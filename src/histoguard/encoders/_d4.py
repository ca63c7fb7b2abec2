"""``hg-d4``: a CNN whose embedding is exactly invariant to the 8 rotations/reflections of a tile.

Tissue has no preferred orientation, so an embedding should not change when a tile is rotated by
90° or mirrored. Group convolutions over the dihedral group D4 (4 rotations x optional mirror;
with the translations it forms the wallpaper group p4m) build that in rather than hoping
augmentation teaches it. Plain torch: every group convolution is one ``conv2d`` with a weight
assembled from transformed filter copies.

Construction (all feature maps carry a group axis of size 8: shape ``(B, C, 8, H, W)``):

1. **Lifting convolution.** Each filter ψ is applied in its 8 transformed versions ``T_g ψ``
   (``torch.rot90``/``flip`` of the weight). Rotating/mirroring the input then rotates/mirrors
   the maps and permutes the group axis: ``out[T_u x](g) = T_u out[x](u⁻¹g)``.
2. **Group convolutions.** A filter has a group axis too, ψ(h); output element ``g`` uses
   ``T_g ψ(g⁻¹h)``: the filter transformed by g with its group axis permuted by the Cayley table
   (:data:`D4_CAYLEY`). The same transformation law then holds layer after layer.
3. **Equivariant nonlinearity and normalisation.** ReLU is pointwise; batch-norm statistics and
   affine parameters are shared over the group axis (``BatchNorm3d`` over ``(B, 8, H, W)``).
   Downsampling is 2x2 average pooling on even-sized maps, whose 2x2 blocks a 90° rotation or a
   flip maps onto 2x2 blocks; convolutions are stride 1 with odd kernels and ``padding = k // 2``.
4. **Invariant readout.** Mean over space, then max over the group axis: by the law above the
   transformed input only permutes the group axis, which the max ignores.

The invariance is exact up to float rounding, for any weights (random or trained), for tiles
whose side is divisible by 32 (the five 2x2 poolings), the registered 224 included.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from histoguard.encoders._cnn import build_trainable
from histoguard.encoders._registry import IMAGENET_MEAN, IMAGENET_STD, register_encoder

#: Number of elements of D4.
GROUP_ORDER = 8

#: Channels per group element after the lifting layer and each group convolution.
DEFAULT_WIDTHS: tuple[int, ...] = (4, 8, 16, 32, 32)


def _element(g: int) -> tuple[int, int]:
    # Element g = 4 * m + r is the image transform rot90^r ∘ flip^m.
    return g % 4, g // 4


def _index(r: int, m: int) -> int:
    return 4 * m + r % 4


def d4_compose(g: int, h: int) -> int:
    """Index of the product ``g·h`` (apply h first, then g)."""
    (r1, m1), (r2, m2) = _element(g), _element(h)
    # A mirror conjugates a rotation into its inverse: flip ∘ rot^k = rot^-k ∘ flip.
    return _index(r1 + (-r2 if m1 else r2), m1 ^ m2)


def d4_inverse(g: int) -> int:
    """Index of ``g⁻¹``: rotations invert their angle, mirrors are their own inverse."""
    r, m = _element(g)
    return g if m else _index(-r, 0)


#: ``D4_CAYLEY[g][h]`` is the index of ``g·h``.
D4_CAYLEY: tuple[tuple[int, ...], ...] = tuple(
    tuple(d4_compose(g, h) for h in range(GROUP_ORDER)) for g in range(GROUP_ORDER)
)


def d4_transform(x: torch.Tensor, g: int) -> torch.Tensor:
    """Apply element ``g`` to the last two (spatial, square) axes of ``x``.

    Element ``g = 4 * m + r``: mirror the last axis if ``m`` is 1, then rotate by ``r`` x 90°
    (``torch.rot90`` over the last two axes). Composition follows :data:`D4_CAYLEY`:
    ``d4_transform(d4_transform(x, h), g) == d4_transform(x, D4_CAYLEY[g][h])``.
    """
    r, m = _element(g)
    if m:
        x = x.flip(-1)
    return torch.rot90(x, r, dims=(-2, -1))


class LiftingConvD4(nn.Module):
    """Image to group feature maps: ``(B, C_in, H, W)`` -> ``(B, C_out, 8, H, W)``.

    Output ``[:, :, g]`` is the cross-correlation with the filters transformed by ``g``.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int) -> None:
        super().__init__()
        if kernel % 2 != 1:
            raise ValueError(f"kernel must be odd to keep a centre pixel, got {kernel}")
        self.weight = nn.Parameter(torch.empty(c_out, c_in, kernel, kernel))
        nn.init.kaiming_normal_(self.weight, nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, H, W)`` -> ``(B, C_out, 8, H, W)``."""
        c_out, c_in, k, _ = self.weight.shape
        # (C_out, 8, C_in, k, k): output channel o, group element g uses T_g ψ_o.
        w = torch.stack([d4_transform(self.weight, g) for g in range(GROUP_ORDER)], dim=1)
        y = F.conv2d(x, w.reshape(c_out * GROUP_ORDER, c_in, k, k), padding=k // 2)
        return y.view(x.shape[0], c_out, GROUP_ORDER, *y.shape[-2:])


class GroupConvD4(nn.Module):
    """Group to group: ``(B, C_in, 8, H, W)`` -> ``(B, C_out, 8, H, W)``.

    Output ``g`` correlates input element ``h`` with ``T_g ψ(g⁻¹h)``, ψ of shape
    ``(C_out, C_in, 8, k, k)``; all 8 outputs are computed by one ``conv2d``.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int) -> None:
        super().__init__()
        if kernel % 2 != 1:
            raise ValueError(f"kernel must be odd to keep a centre pixel, got {kernel}")
        self.weight = nn.Parameter(torch.empty(c_out, c_in, GROUP_ORDER, kernel, kernel))
        nn.init.kaiming_normal_(self.weight, nonlinearity="relu")
        # perms[g][h] = index of g⁻¹h: where output g reads the filter's group axis for input h.
        self.perms = [
            [D4_CAYLEY[d4_inverse(g)][h] for h in range(GROUP_ORDER)] for g in range(GROUP_ORDER)
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, 8, H, W)`` -> ``(B, C_out, 8, H, W)``."""
        c_out, c_in, n, k, _ = self.weight.shape
        w = torch.stack(
            [d4_transform(self.weight[:, :, self.perms[g]], g) for g in range(GROUP_ORDER)],
            dim=1,
        )  # (C_out, 8 outputs, C_in, 8 inputs, k, k)
        y = F.conv2d(x.flatten(1, 2), w.reshape(c_out * n, c_in * n, k, k), padding=k // 2)
        return y.view(x.shape[0], c_out, n, *y.shape[-2:])


class _SpatialPool2x2(nn.Module):
    """2x2 average pooling of each group feature map: ``(B, C, 8, H, W)`` -> ``(..., H/2, W/2)``.

    On even-sized maps a 90° rotation or a flip maps the 2x2 blocks onto 2x2 blocks, so the
    pooling commutes with every D4 element.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, 8, H, W)`` -> ``(B, C, 8, H // 2, W // 2)``."""
        y = F.avg_pool2d(x.flatten(1, 2), 2)
        return y.view(*x.shape[:3], *y.shape[-2:])


class _GroupBlock(nn.Sequential):
    """Group conv (or lifting), optional 2x2 pooling, group-shared batch-norm, ReLU."""

    def __init__(self, conv: nn.Module, c_out: int, *, pool: bool) -> None:
        # Pooling straight after the (linear) convolution acts like an anti-aliased stride-2
        # convolution and makes the batch-norm and ReLU that follow 4x cheaper.
        layers = [conv, _SpatialPool2x2()] if pool else [conv]
        layers += [nn.BatchNorm3d(c_out), nn.ReLU(inplace=True)]
        super().__init__(*layers)


class D4InvariantCNN(nn.Module):
    """D4-invariant CNN: ``(B, 3, S, S)`` normalised tiles -> ``(B, embed_dim)`` embeddings.

    A 5x5 lifting layer and 3x3 group convolutions, each followed by 2x2 pooling, then a 1x1
    group convolution to ``embed_dim`` channels, mean over space and max over the group. S
    must be divisible by ``2 ** len(widths)`` (32 by default).

    Args:
        embed_dim: length D of the embedding.
        widths: channels per group element of the lifting layer and the following group
            convolutions (each layer holds ``8 * width`` feature maps).
    """

    def __init__(self, embed_dim: int = 128, widths: tuple[int, ...] = DEFAULT_WIDTHS) -> None:
        super().__init__()
        blocks: list[nn.Module] = [
            _GroupBlock(LiftingConvD4(3, widths[0], kernel=5), widths[0], pool=True)
        ]
        for c_in, c_out in itertools.pairwise(widths):
            blocks.append(_GroupBlock(GroupConvD4(c_in, c_out, kernel=3), c_out, pool=True))
        blocks.append(
            _GroupBlock(GroupConvD4(widths[-1], embed_dim, kernel=1), embed_dim, pool=False)
        )
        self.blocks = nn.Sequential(*blocks)
        self.embed_dim = embed_dim
        self.divisor = 2 ** len(widths)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Equivariant maps: ``(B, 3, S, S)`` -> ``(B, embed_dim, 8, S / d, S / d)``.

        ``d = 2 ** len(widths)``, 32 by default.

        For input ``T_u x`` the output at group element g is ``T_u`` of this output at ``u⁻¹g``.

        Raises:
            ValueError: the input is not square with a side divisible by ``d`` (pooling an
                odd size would break the symmetry).
        """
        height, width = x.shape[-2:]
        if height != width or height % self.divisor:
            raise ValueError(
                f"hg-d4 needs square tiles with a side divisible by {self.divisor}, "
                f"got {height}x{width}"
            )
        out: torch.Tensor = self.blocks(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` float32 normalised tiles -> ``(B, embed_dim)`` invariant embeddings."""
        return self.features(x).mean(dim=(3, 4)).amax(dim=2)


@register_encoder(
    "hg-d4",
    embed_dim=128,
    input_size=224,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    licence="Apache-2.0",
    citation="Cohen & Welling, Group Equivariant Convolutional Networks, ICML 2016; "
    "Veeling et al., Rotation Equivariant CNNs for Digital Pathology, MICCAI 2018",
    description="D4 (90° rotation + flip) group-convolution CNN, embedding exactly invariant; "
    "random weights unless given",
)
def build_d4(weights: Path | None, *, allow_pickle: bool) -> nn.Module:
    """A :class:`D4InvariantCNN` with seeded random weights, or those in ``weights``."""
    return build_trainable(
        lambda: D4InvariantCNN(embed_dim=128), weights, name="hg-d4", allow_pickle=allow_pickle
    )
