"""``hg-handcrafted``: colour, stain and texture statistics; no weights, no training.

A baseline any learned encoder must beat, and a check that needs nothing downloaded. Per tile:

* optical density ``OD = -log10((255 I + 1) / 256)`` of R, G, B (I: intensity in [0, 1]);
* haematoxylin (H) and eosin (E) from Ruifrok–Johnston colour deconvolution of the OD;
* mean, std and 10th/50th/90th percentiles of OD R, G, B, H and E (over all pixels);
* texture of the grey image and of H: Sobel gradient-magnitude mean and std, Laplacian variance,
  and the energy of scale-normalised Laplacian-of-Gaussian responses at σ = 1, 2, 4 px;
* the fraction of background pixels (every RGB OD below 0.15, i.e. near-white glass).

Every feature is invariant, up to float rounding, to 90° rotations and flips of a square tile:
statistics ignore pixel order, the filters are isotropic or (Sobel) map onto themselves up to
sign, and the borders are handled by mirroring.

:data:`FEATURE_NAMES` names the embedding's columns in order. Features have different units
and scales; standardise them before fitting a model.

Registered with ``mean = (0, 0, 0)`` and ``std = (1, 1, 1)``, so the module receives RGB in
[0, 1] unchanged by :meth:`Encoder.preprocess`.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from histoguard.encoders._registry import register_encoder
from histoguard.errors import WeightsError

#: Ruifrok & Johnston (2001) stain OD vectors (rows: haematoxylin, eosin, DAB; columns: R, G,
#: B), as in scikit-image's ``rgb_from_hed``; rows are normalised to unit length below.
RGB_FROM_HED = ((0.65, 0.70, 0.29), (0.07, 0.99, 0.11), (0.27, 0.57, 0.78))

#: OD below this in every channel counts as background (Macenko et al. 2009 use 0.15 for
#: "transparent" pixels); 0.15 OD is an intensity of about 180 / 255.
BACKGROUND_OD = 0.15

#: Luma weights (ITU-R BT.601) for the grey image.
GREY_WEIGHTS = (0.299, 0.587, 0.114)

#: Gaussian scales (pixels) of the Laplacian-of-Gaussian filter bank.
LOG_SIGMAS = (1.0, 2.0, 4.0)

_STAT_CHANNELS = ("od_r", "od_g", "od_b", "h", "e")
_PERCENTILES = (10.0, 50.0, 90.0)
_STATS = ("mean", "std", *(f"p{q:.0f}" for q in _PERCENTILES))
_TEXTURE_CHANNELS = ("grey", "h")
_TEXTURES = ("grad_mean", "grad_std", "lap_var", *(f"log{s:.0f}_energy" for s in LOG_SIGMAS))

#: Column names of the embedding, in order.
FEATURE_NAMES: tuple[str, ...] = (
    *(f"{c}_{s}" for c in _STAT_CHANNELS for s in _STATS),
    *(f"{c}_{t}" for c in _TEXTURE_CHANNELS for t in _TEXTURES),
    "background_fraction",
)


def percentiles(x: torch.Tensor, qs: tuple[float, ...]) -> torch.Tensor:
    """Percentiles along the last axis, interpolated linearly like ``numpy.percentile``.

    ``(..., N)`` -> ``(..., len(qs))``. Written with a sort because ``torch.quantile`` refuses
    inputs of more than 2**24 elements (a batch of 64 tiles of 5 channels exceeds it).
    """
    ordered = x.sort(dim=-1).values
    last = x.shape[-1] - 1
    columns = []
    for q in qs:
        position = q / 100.0 * last
        lo = math.floor(position)
        hi = min(lo + 1, last)
        frac = position - lo
        columns.append(ordered[..., lo] * (1.0 - frac) + ordered[..., hi] * frac)
    return torch.stack(columns, dim=-1)


def _sobel_and_laplacian(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sobel gradient magnitude and 5-point Laplacian: ``(B, C, H, W)`` -> two ``(B, C, H, W)``.

    Written as shifted slices rather than ``conv2d``: one-channel convolutions are slow on CPU.
    Reflect padding avoids the false edges zero padding would add at the tile border.
    """
    p = F.pad(images, (1, 1, 1, 1), mode="reflect")
    # Sobel: [1, 2, 1] smoothing across, central difference along; / 8 gives units per pixel.
    across_rows = p[..., :-2, :] + 2.0 * p[..., 1:-1, :] + p[..., 2:, :]  # (B, C, H, W + 2)
    across_cols = p[..., :-2] + 2.0 * p[..., 1:-1] + p[..., 2:]  # (B, C, H + 2, W)
    gx = (across_rows[..., 2:] - across_rows[..., :-2]) / 8.0
    gy = (across_cols[..., 2:, :] - across_cols[..., :-2, :]) / 8.0
    centre = p[..., 1:-1, 1:-1]
    laplacian = (
        p[..., 1:-1, :-2] + p[..., 1:-1, 2:] + p[..., :-2, 1:-1] + p[..., 2:, 1:-1] - 4.0 * centre
    )
    return torch.hypot(gx, gy), laplacian


def _log_energies(images: torch.Tensor, sigmas: tuple[float, ...]) -> torch.Tensor:
    """Mean squared response to scale-normalised Laplacian-of-Gaussian filters.

    ``(B, C, H, W)`` -> ``(B, C, len(sigmas))``. The filter at scale σ has the transfer function
    ``-σ² |ω|² exp(-σ² |ω|² / 2)`` (ω in radians per pixel); the σ² factor makes energies at
    different scales comparable. Computed by Parseval's theorem from one power spectrum, far
    cheaper on CPU than large spatial kernels. The image is mirrored to ``2H x 2W`` first so the
    periodic extension the DFT assumes has no jump at the tile border.
    """
    h, w = images.shape[-2:]
    mirrored = torch.cat([images, images.flip(-1)], dim=-1)
    mirrored = torch.cat([mirrored, mirrored.flip(-2)], dim=-2)  # (B, C, 2H, 2W)
    power = torch.fft.rfft2(mirrored).abs().square()  # (B, C, 2H, W + 1)
    wy = 2.0 * math.pi * torch.fft.fftfreq(2 * h, device=images.device)
    wx = 2.0 * math.pi * torch.fft.rfftfreq(2 * w, device=images.device)
    radius2 = wy[:, None] ** 2 + wx[None, :] ** 2
    # rfft2 keeps half of the Hermitian spectrum: count every column but DC and Nyquist twice.
    column_weight = torch.full_like(wx, 2.0)
    column_weight[0] = column_weight[-1] = 1.0
    n = 4 * h * w
    energies = []
    for sigma in sigmas:
        gain = (sigma**2 * radius2 * torch.exp(-0.5 * sigma**2 * radius2)) ** 2
        energies.append((power * (gain * column_weight)).sum(dim=(-2, -1)) / n**2)
    return torch.stack(energies, dim=-1)


class HandcraftedFeatures(nn.Module):
    """RGB tiles in [0, 1] -> hand-crafted features: ``(B, 3, S, S)`` -> ``(B, 38)``.

    Columns as in :data:`FEATURE_NAMES`. No parameters; the unmixing matrix and grey weights are
    non-persistent buffers (they follow ``.to(device)`` but stay out of the state dict).
    Computed in float32 even under autocast. S must exceed 1 (reflect padding).
    """

    embed_dim = len(FEATURE_NAMES)

    def __init__(self) -> None:
        super().__init__()
        rgb_from_hed = torch.tensor(RGB_FROM_HED, dtype=torch.float64)
        rgb_from_hed = rgb_from_hed / rgb_from_hed.norm(dim=1, keepdim=True)
        # OD (row vector over R, G, B) = concentrations @ rgb_from_hed, so invert to unmix.
        self.hed_from_rgb: torch.Tensor
        self.register_buffer("hed_from_rgb", torch.linalg.inv(rgb_from_hed).float(), False)
        self.grey_weights: torch.Tensor
        self.register_buffer("grey_weights", torch.tensor(GREY_WEIGHTS), False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` RGB in [0, 1] -> ``(B, len(FEATURE_NAMES))`` float32 features."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            rgb = x.float().clamp(0.0, 1.0)  # resampling may overshoot [0, 1] slightly
            od = -torch.log10((rgb * 255.0 + 1.0) / 256.0)  # (B, 3, H, W), 0 .. 2.41
            hed = torch.einsum("bchw,cs->bshw", od, self.hed_from_rgb)  # (B, 3, H, W)
            h = hed[:, :1]
            stain = torch.cat([od, h, hed[:, 1:2]], dim=1).flatten(2)  # (B, 5, H*W)
            stats = torch.cat(
                [
                    stain.mean(dim=2, keepdim=True),
                    stain.std(dim=2, correction=0, keepdim=True),
                    percentiles(stain, _PERCENTILES),
                ],
                dim=2,
            )  # (B, 5 channels, 5 statistics)
            grey = torch.einsum("bchw,c->bhw", rgb, self.grey_weights).unsqueeze(1)
            texture = self._texture(torch.cat([grey, h], dim=1))  # (B, 2, 6)
            background = (od < BACKGROUND_OD).all(dim=1).flatten(1).float().mean(dim=1)
            return torch.cat([stats.flatten(1), texture.flatten(1), background[:, None]], dim=1)

    @staticmethod
    def _texture(images: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, C, len(_TEXTURES))`` texture descriptors."""
        magnitude, laplacian = _sobel_and_laplacian(images)
        magnitude = magnitude.flatten(2)
        columns = [
            magnitude.mean(dim=2),
            magnitude.std(dim=2, correction=0),
            laplacian.flatten(2).var(dim=2, correction=0),
        ]
        return torch.cat([torch.stack(columns, dim=2), _log_energies(images, LOG_SIGMAS)], dim=2)


@register_encoder(
    "hg-handcrafted",
    embed_dim=len(FEATURE_NAMES),
    input_size=224,
    mean=(0.0, 0.0, 0.0),
    std=(1.0, 1.0, 1.0),
    licence="Apache-2.0",
    citation="Ruifrok & Johnston, Quantification of histochemical staining by color "
    "deconvolution, Anal Quant Cytol Histol 2001",
    description="hand-crafted OD, H&E stain and texture statistics (38 features); no weights",
)
def build_handcrafted(weights: Path | None, *, allow_pickle: bool) -> nn.Module:
    """A :class:`HandcraftedFeatures` module.

    Raises:
        WeightsError: ``weights`` was given; this encoder has none.
    """
    if weights is not None:
        raise WeightsError(
            f"{weights}: encoder 'hg-handcrafted' has no weights to load; leave out --weights"
        )
    return HandcraftedFeatures()
