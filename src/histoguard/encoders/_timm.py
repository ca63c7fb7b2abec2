"""Pathology foundation models built with ``timm`` from local weight files.

``timm`` is optional and imported only when one of these encoders is built. Each preset
builds its architecture with ``pretrained=False`` (nothing is downloaded) and loads the user's
file through :func:`~histoguard.core._weights.load_state_dict` (safetensors unless
``allow_pickle``), strictly: a file that does not fit the architecture is an error, not a
partly random model.

Where the kwargs come from (checked against the model cards' published code and the hub
``config.json`` files as quoted by several independent public repositories; the hub itself
was not reachable from here):

* ``uni``: ``vit_large_patch16_224`` with img_size 224, patch_size 16, init_values 1e-5,
  num_classes 0, dynamic_img_size True (MahmoodLab/UNI model card).
* ``uni2-h``: ``vit_giant_patch14_224`` with the card's ``timm_kwargs`` (depth 24, 24 heads,
  embed_dim 1536, mlp_ratio 2.66667*2, SwiGLUPacked + SiLU, 8 register tokens,
  no_embed_class) (MahmoodLab/UNI2-h model card).
* ``virchow2``: ``vit_huge_patch14_224`` with the hub config's model_args (img_size 224,
  init_values 1e-5, num_classes 0, reg_tokens 4, mlp_ratio 5.3375, global_pool "",
  dynamic_img_size True) plus the card's mlp_layer SwiGLUPacked, act_layer SiLU; embedding =
  CLS token concatenated with the mean of the patch tokens (registers excluded) = 2560.
* ``h-optimus-0``: the parameters of bioptimus' release README (ViT-g/14: embed_dim 1536,
  depth 40, 24 heads, mlp_ratio 5.33334, GluMlp with SiLU and gate_last False, which is
  timm's SwiGLUPacked, 4 register tokens, no_embed_class, init_values 1e-5), which equal timm's
  ``vit_giant_patch14_reg4_dinov2``; dynamic_img_size False as on the model card.
* ``h-optimus-1``: NOT VERIFIED in detail: the model card loads it from the hub with the same
  call as H-optimus-0 (init_values 1e-5, dynamic_img_size False) and describes the same
  ViT-g/14 (1.1B parameters); its config.json could not be read here, so the H-optimus-0
  architecture is assumed. Strict loading reports any mismatch.
* ``prov-gigapath``: ``vit_giant_patch14_dinov2`` with the hub config's model_args, which
  override the name's patch size: img_size 224, in_chans 3, patch_size 16, embed_dim 1536,
  depth 40, 24 heads, init_values 1e-5, mlp_ratio 5.33334, num_classes 0.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from histoguard.core._weights import load_state_dict
from histoguard.encoders._registry import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EncoderFactory,
    get_encoder_info,
    register_encoder,
)
from histoguard.errors import EncoderError, WeightsError

#: H-optimus normalisation (bioptimus model cards).
HOPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
HOPTIMUS_STD = (0.211883, 0.230117, 0.177517)

#: kwargs values naming a class, resolved when timm is imported: ("timm.layers", "SwiGLUPacked")
#: means ``timm.layers.SwiGLUPacked``.
_LayerRef = tuple[Literal["timm.layers", "torch.nn"], str]
_SWIGLU: _LayerRef = ("timm.layers", "SwiGLUPacked")
_SILU: _LayerRef = ("torch.nn", "SiLU")

_Pooling = Literal["model", "cls+mean_patch"]


@dataclass(frozen=True)
class TimmPreset:
    """How to build one encoder with timm.

    Attributes:
        architecture: ``timm.create_model`` name.
        kwargs: its keyword arguments; layer classes as :data:`_LayerRef` pairs.
        pooling: ``"model"``: the model's own output is the embedding; ``"cls+mean_patch"``:
            the model returns all tokens and the embedding is the CLS token concatenated with
            the mean of the patch tokens (prefix tokens excluded).
    """

    architecture: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    pooling: _Pooling = "model"


_HOPTIMUS = TimmPreset(
    "vit_giant_patch14_reg4_dinov2",
    {
        "img_size": 224,
        "patch_size": 14,
        "embed_dim": 1536,
        "depth": 40,
        "num_heads": 24,
        "init_values": 1e-5,
        "mlp_ratio": 5.33334,
        "mlp_layer": _SWIGLU,
        "act_layer": _SILU,
        "reg_tokens": 4,
        "no_embed_class": True,
        "num_classes": 0,
        "in_chans": 3,
        "dynamic_img_size": False,
    },
)

#: Every preset by registry name.
TIMM_PRESETS: dict[str, TimmPreset] = {
    "uni": TimmPreset(
        "vit_large_patch16_224",
        {
            "img_size": 224,
            "patch_size": 16,
            "init_values": 1e-5,
            "num_classes": 0,
            "dynamic_img_size": True,
        },
    ),
    "uni2-h": TimmPreset(
        "vit_giant_patch14_224",
        {
            "img_size": 224,
            "patch_size": 14,
            "depth": 24,
            "num_heads": 24,
            "init_values": 1e-5,
            "embed_dim": 1536,
            "mlp_ratio": 2.66667 * 2,
            "num_classes": 0,
            "no_embed_class": True,
            "mlp_layer": _SWIGLU,
            "act_layer": _SILU,
            "reg_tokens": 8,
            "dynamic_img_size": True,
        },
    ),
    "virchow2": TimmPreset(
        "vit_huge_patch14_224",
        {
            "img_size": 224,
            "init_values": 1e-5,
            "num_classes": 0,
            "reg_tokens": 4,
            "mlp_ratio": 5.3375,
            "global_pool": "",
            "dynamic_img_size": True,
            "mlp_layer": _SWIGLU,
            "act_layer": _SILU,
        },
        pooling="cls+mean_patch",
    ),
    "h-optimus-0": _HOPTIMUS,
    "h-optimus-1": _HOPTIMUS,
    "prov-gigapath": TimmPreset(
        "vit_giant_patch14_dinov2",
        {
            "img_size": 224,
            "in_chans": 3,
            "patch_size": 16,
            "embed_dim": 1536,
            "depth": 40,
            "num_heads": 24,
            "init_values": 1e-5,
            "mlp_ratio": 5.33334,
            "num_classes": 0,
        },
    ),
}


class ClsMeanPatchPool(torch.nn.Module):
    """``(B, 3, S, S)`` -> ``(B, 2 * D)``: CLS token and mean patch token of a token model.

    Args:
        model: returns ``(B, prefix + patches, D)`` tokens, the CLS token first, and has
            ``num_prefix_tokens`` (CLS plus register tokens, which the mean excludes).
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 1))

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        tokens: torch.Tensor = self.model(tiles)
        return torch.cat([tokens[:, 0], tokens[:, self.num_prefix_tokens :].mean(dim=1)], dim=-1)


def build_timm_encoder(name: str, weights: Path | None, *, allow_pickle: bool) -> torch.nn.Module:
    """Build preset ``name`` with timm and load ``weights`` into it strictly.

    Raises:
        EncoderError: timm is not installed, or cannot build the architecture.
        WeightsError: no weights, weights missing/corrupt, or not fitting the architecture.
        UnsafeWeightsError: a pickled checkpoint without ``allow_pickle``.
    """
    preset = TIMM_PRESETS[name]
    info = get_encoder_info(name)
    timm = _import_timm(name)
    if weights is None:
        raise WeightsError(f"encoder {name!r} needs weights: {info.weights_hint}")
    state = load_state_dict(weights, allow_pickle=allow_pickle)
    kwargs = {key: _resolve(timm, value) for key, value in preset.kwargs.items()}
    try:
        model: torch.nn.Module = timm.create_model(preset.architecture, pretrained=False, **kwargs)
    except Exception as exc:  # unknown architecture or kwargs in this timm version
        raise EncoderError(
            f"timm {getattr(timm, '__version__', '?')} cannot build {name!r} "
            f"({preset.architecture}): {exc}"
        ) from exc
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"{weights}: weights do not fit {name!r}: {exc}") from exc
    return ClsMeanPatchPool(model) if preset.pooling == "cls+mean_patch" else model


def _import_timm(name: str) -> types.ModuleType:
    try:
        import timm
    except ImportError as exc:
        raise EncoderError(
            f"encoder {name!r} needs timm: install timm (pip install histoguard[timm]) "
            "and try again"
        ) from exc
    module: types.ModuleType = timm
    return module


def _resolve(timm: types.ModuleType, value: Any) -> Any:
    if isinstance(value, tuple) and len(value) == 2 and value[0] in ("timm.layers", "torch.nn"):
        owner = timm.layers if value[0] == "timm.layers" else torch.nn
        return getattr(owner, value[1])
    return value


def _factory(name: str) -> EncoderFactory:
    def factory(weights: Path | None, *, allow_pickle: bool) -> torch.nn.Module:
        return build_timm_encoder(name, weights, allow_pickle=allow_pickle)

    return factory


def _register(
    name: str,
    *,
    embed_dim: int,
    repo: str,
    licence: str,
    gated: bool,
    citation: str,
    description: str,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
) -> None:
    register_encoder(
        name,
        embed_dim=embed_dim,
        input_size=224,
        mean=mean,
        std=std,
        licence=licence,
        gated=gated,
        needs_weights=True,
        citation=citation,
        description=description + " (needs timm)",
        weights_hint=f"Download the weights from https://huggingface.co/{repo} (model card; "
        f"{'access must be requested' if gated else 'public'}) and pass the file; "
        "safetensors unless --allow-pickle.",
    )(_factory(name))


_register(
    "uni",
    embed_dim=1024,
    repo="MahmoodLab/UNI",
    licence="CC-BY-NC-ND-4.0",
    gated=True,
    citation="Chen et al., Towards a general-purpose foundation model for computational "
    "pathology, Nature Medicine 2024",
    description="UNI (Mahmood Lab): ViT-L/16, DINOv2 on Mass-100K",
)
_register(
    "uni2-h",
    embed_dim=1536,
    repo="MahmoodLab/UNI2-h",
    licence="CC-BY-NC-ND-4.0",
    gated=True,
    citation="Chen et al., Towards a general-purpose foundation model for computational "
    "pathology, Nature Medicine 2024",
    description="UNI2-h (Mahmood Lab): ViT-H/14, 8 register tokens",
)
_register(
    "virchow2",
    embed_dim=2560,
    repo="paige-ai/Virchow2",
    licence="CC-BY-NC-ND-4.0",
    gated=True,
    citation="Zimmermann et al., Virchow2: Scaling Self-Supervised Mixed Magnification Models "
    "in Pathology, arXiv:2408.00738, 2024",
    description="Virchow2 (Paige): ViT-H/14; CLS token + mean patch token",
)
_register(
    "h-optimus-0",
    embed_dim=1536,
    repo="bioptimus/H-optimus-0",
    licence="Apache-2.0",
    gated=True,
    citation="Saillard et al., H-optimus-0, https://github.com/bioptimus/releases, 2024",
    description="H-optimus-0 (Bioptimus): ViT-g/14, 4 register tokens",
    mean=HOPTIMUS_MEAN,
    std=HOPTIMUS_STD,
)
_register(
    "h-optimus-1",
    embed_dim=1536,
    repo="bioptimus/H-optimus-1",
    licence="see the model card (not verified here)",
    gated=True,
    citation="Bioptimus, H-optimus-1, https://huggingface.co/bioptimus/H-optimus-1, 2025",
    description="H-optimus-1 (Bioptimus): ViT-g/14, 4 register tokens",
    mean=HOPTIMUS_MEAN,
    std=HOPTIMUS_STD,
)
_register(
    "prov-gigapath",
    embed_dim=1536,
    repo="prov-gigapath/prov-gigapath",
    licence="Apache-2.0",
    gated=True,
    citation="Xu et al., A whole-slide foundation model for digital pathology from real-world "
    "data, Nature 2024",
    description="Prov-GigaPath tile encoder: ViT-g, 16 px patches",
)
