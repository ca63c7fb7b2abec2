"""``hg-cnn``: a compact CNN to train from scratch on pathology tiles.

Five stride-2 stages of 3x3 conv-BN-ReLU halve the tile five times (224 -> 7 px), a 1x1 conv
widens to the embedding, and global average pooling makes the embedding independent of the tile
size. About 0.3 M parameters, so training and inference are quick on a CPU. It is the plain
baseline against which the rotation-invariant ``hg-d4`` is compared: nothing here is invariant.

This module also holds :func:`build_trainable`, shared by every built-in trainable encoder.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from histoguard.encoders._registry import IMAGENET_MEAN, IMAGENET_STD, register_encoder
from histoguard.errors import WeightsError

#: Seed of the "random" initial weights, so an untrained encoder embeds alike on every run.
INIT_SEED = 0

#: Channels after each stride-2 stage; each stage halves height and width.
DEFAULT_WIDTHS: tuple[int, ...] = (16, 32, 64, 96, 160)


def _conv_bn_relu(c_in: int, c_out: int, *, kernel: int, stride: int) -> nn.Sequential:
    # No conv bias: the batch-norm shift that follows would cancel it.
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class CompactCNN(nn.Module):
    """A small plain CNN: ``(B, 3, S, S)`` normalised tiles -> ``(B, embed_dim)`` embeddings.

    Any S >= 32 works (global pooling); the registry declares S = 224. Embeddings are
    non-negative (post-ReLU averages).

    Args:
        embed_dim: length D of the embedding.
        widths: channels of the stride-2 stages, one stage per entry.
    """

    def __init__(self, embed_dim: int = 256, widths: tuple[int, ...] = DEFAULT_WIDTHS) -> None:
        super().__init__()
        stages: list[nn.Module] = []
        c_in = 3
        for width in widths:
            stages.append(_conv_bn_relu(c_in, width, kernel=3, stride=2))
            c_in = width
        # A 1x1 widening is far cheaper in parameters than a last 3x3 stage at full width.
        stages.append(_conv_bn_relu(c_in, embed_dim, kernel=1, stride=1))
        self.features = nn.Sequential(*stages)
        self.embed_dim = embed_dim
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` float32 normalised tiles -> ``(B, embed_dim)`` float32."""
        maps: torch.Tensor = self.features(x)  # (B, embed_dim, S / 32, S / 32)
        return maps.mean(dim=(2, 3))


def build_trainable(
    make: Callable[[], nn.Module], weights: Path | None, *, name: str, allow_pickle: bool
) -> nn.Module:
    """Build a module with seeded random weights, then load ``weights`` into it if given.

    Args:
        make: builds the module (its random initialisation runs under :data:`INIT_SEED`).
        weights: a state-dict file whose keys and shapes must all match, or None.
        name: the encoder's registry name, for error messages.
        allow_pickle: passed on to the weights loader.

    Raises:
        WeightsError: the file's keys or shapes do not fit (and whatever
            :func:`histoguard.core._weights.load_state_dict` raises for an unreadable or
            unsafe file).
    """
    # A forked RNG leaves the caller's global random state untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(INIT_SEED)
        module = make()
    if weights is None:
        return module
    # Imported here so building an encoder without weights never needs the weights module.
    from histoguard.core._weights import load_state_dict

    state = load_state_dict(weights, allow_pickle=allow_pickle)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(
            f"{weights}: these weights do not fit encoder {name!r} ({exc}). "
            f"Pass a state dict saved from {name!r}."
        ) from exc
    return module


@register_encoder(
    "hg-cnn",
    embed_dim=256,
    input_size=224,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    licence="Apache-2.0",
    description="compact 5-stage CNN (~0.3 M parameters) to train from scratch; random weights "
    "unless given",
)
def build_cnn(weights: Path | None, *, allow_pickle: bool) -> nn.Module:
    """A :class:`CompactCNN` with seeded random weights, or those in ``weights``."""
    return build_trainable(
        lambda: CompactCNN(embed_dim=256), weights, name="hg-cnn", allow_pickle=allow_pickle
    )
