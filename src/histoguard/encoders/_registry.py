"""The encoder registry: factories registered by decorator, with the metadata users need.

An encoder turns RGB tiles into embeddings. Every encoder, built in or adapted from a user's
file, is one :class:`Encoder`: a torch module, its preprocessing, and its embedding dimension.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from histoguard.core._image import ResizePolicy, resize_tiles
from histoguard.core._registry import Registry
from histoguard.errors import EncoderError, UnknownEncoderError

if TYPE_CHECKING:
    import torch

#: ImageNet statistics, the normalisation most pathology encoders were trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class EncoderFactory(Protocol):
    """Builds an encoder's torch module.

    Args:
        weights: a local weights file or model directory (None: random/untrained weights, or
            no weights needed).
        allow_pickle: the user explicitly allowed a pickled checkpoint (loaded with
            ``weights_only=True``).
    """

    def __call__(self, weights: Path | None, *, allow_pickle: bool) -> torch.nn.Module: ...


@dataclass(frozen=True, kw_only=True)
class EncoderInfo:
    """What the registry knows about an encoder.

    Attributes:
        name: registry name (``--encoder NAME``).
        embed_dim: length D of each embedding.
        input_size: side in pixels of the square tiles the module expects.
        mean, std: per-channel normalisation applied to RGB in [0, 1].
        licence: licence of the architecture/weights.
        gated: the weights sit behind an access agreement (e.g. on a model hub).
        needs_weights: the encoder is useless without a weights file or model directory.
        citation: the paper to cite.
        description: one line for listings.
        weights_hint: where a user gets the weights, for presets that need them.
        factory: builds the torch module.
        resize: how tiles of another size are brought to ``input_size`` (interpolation, and
            centre-crop, stretch or refuse for non-square tiles); the one resize every tile
            goes through, in ``extract``, ``audit``, stress tests and attacks alike.
    """

    name: str
    embed_dim: int
    input_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    licence: str = ""
    gated: bool = False
    needs_weights: bool = False
    citation: str = ""
    description: str = ""
    weights_hint: str = ""
    factory: EncoderFactory = field(repr=False, compare=False)
    resize: ResizePolicy = field(default_factory=ResizePolicy)

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible metadata (everything but the factory)."""
        return {
            "name": self.name,
            "embed_dim": self.embed_dim,
            "input_size": self.input_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "licence": self.licence,
            "gated": self.gated,
            "needs_weights": self.needs_weights,
            "citation": self.citation,
            "description": self.description,
            "weights_hint": self.weights_hint,
            "resize": self.resize.to_dict(),
        }


#: Every encoder by name; the package ``__init__`` imports the built-in modules that fill it.
ENCODERS: Registry[EncoderInfo] = Registry("encoder", error=UnknownEncoderError)


def register_encoder(
    name: str,
    *,
    embed_dim: int,
    input_size: int,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
    licence: str = "",
    gated: bool = False,
    needs_weights: bool = False,
    citation: str = "",
    description: str = "",
    weights_hint: str = "",
    resize: ResizePolicy | None = None,
) -> Callable[[EncoderFactory], EncoderFactory]:
    """Register a factory ``(weights, *, allow_pickle) -> torch.nn.Module`` under ``name``.

    The module must map ``(B, 3, input_size, input_size)`` float32 normalised tiles to
    ``(B, embed_dim)`` embeddings. ``resize`` (default :class:`ResizePolicy()`: bilinear,
    antialiased, non-square tiles centre-cropped) says how tiles of another size reach it.

    Raises:
        ConfigError: ``name`` is already registered (also a ``ValueError``).
    """

    def decorate(factory: EncoderFactory) -> EncoderFactory:
        info = EncoderInfo(
            name=name,
            embed_dim=embed_dim,
            input_size=input_size,
            mean=mean,
            std=std,
            licence=licence,
            gated=gated,
            needs_weights=needs_weights,
            citation=citation,
            description=description,
            weights_hint=weights_hint,
            factory=factory,
            resize=resize or ResizePolicy(),
        )
        ENCODERS.add(name, info)
        return factory

    return decorate


def list_encoders() -> list[EncoderInfo]:
    """Every registered encoder, sorted by name."""
    return list(ENCODERS.entries())


def get_encoder_info(name: str) -> EncoderInfo:
    """The registry entry for ``name``.

    Raises:
        UnknownEncoderError: no such encoder; the message lists the registered ones and the
            closest match.
    """
    return ENCODERS.get(name)


class Encoder:
    """A loaded encoder: preprocessing plus a torch module in evaluation mode.

    Args:
        info: the registry entry.
        module: maps ``(B, 3, S, S)`` float32 normalised tiles to ``(B, D)``.
        device: torch device string the module lives on.
    """

    def __init__(self, info: EncoderInfo, module: torch.nn.Module, device: str = "cpu") -> None:
        self.info = info
        self.device = device
        self.module = module.to(device).eval()

    @property
    def embed_dim(self) -> int:
        """Length D of each embedding."""
        return self.info.embed_dim

    def preprocess(self, tiles: np.ndarray) -> torch.Tensor:
        """``(B, H, W, 3)`` uint8 RGB tiles -> ``(B, 3, S, S)`` float32, normalised.

        Tiles of another size are resized to ``input_size`` by the encoder's ``info.resize``
        (:func:`~histoguard.core._image.resize_tiles`, the same resize the attacks use).

        Raises:
            ValueError: not a ``(B, H, W, 3)`` uint8 batch.
            ImageError: non-square tiles and a resize policy that refuses them.
        """
        import torch

        if tiles.ndim != 4 or tiles.shape[3] != 3 or tiles.dtype != np.uint8:
            raise ValueError(f"expected (B, H, W, 3) uint8 tiles, got {tiles.shape} {tiles.dtype}")
        if not tiles.flags.writeable:  # torch.from_numpy warns on read-only memory
            tiles = tiles.copy()
        batch = torch.from_numpy(np.ascontiguousarray(tiles)).permute(0, 3, 1, 2).float() / 255.0
        batch = resize_tiles(batch, self.info.input_size, self.info.resize)
        mean = torch.tensor(self.info.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.info.std).view(1, 3, 1, 1)
        return (batch - mean) / std

    def encode(self, tiles: np.ndarray) -> np.ndarray:
        """Embed a batch: ``(B, H, W, 3)`` uint8 -> ``(B, D)`` float32 (inference mode;
        autocast to bfloat16 on CUDA)."""
        import torch

        batch = self.preprocess(tiles).to(self.device)
        with torch.inference_mode():
            if self.device.startswith("cuda"):
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    out = self.module(batch)
            else:
                out = self.module(batch)
        features: np.ndarray = out.float().cpu().numpy()
        if features.shape != (len(tiles), self.embed_dim):
            raise EncoderError(
                f"encoder {self.info.name!r} returned shape {features.shape}, "
                f"expected ({len(tiles)}, {self.embed_dim})"
            )
        return features


def load_encoder(
    name: str,
    *,
    weights: str | Path | None = None,
    allow_pickle: bool = False,
    device: str = "cpu",
) -> Encoder:
    """Build a registered encoder, with weights from a local file or directory.

    Nothing is downloaded. Weights load safely by default: safetensors only; a pickled
    checkpoint is refused unless ``allow_pickle=True``, and even then loads with
    ``torch.load(weights_only=True)``.

    Raises:
        UnknownEncoderError: no such encoder.
        WeightsError: weights needed but not given, missing, corrupt or not fitting.
        UnsafeWeightsError: a pickled checkpoint without ``allow_pickle``.
        ConfigError: a ``device`` torch cannot use on this machine.
    """
    from histoguard.core._device import check_device
    from histoguard.core._weights import first_non_finite
    from histoguard.errors import WeightsError

    check_device(device)
    info = get_encoder_info(name)
    path = Path(weights) if weights is not None else None
    if info.needs_weights and path is None:
        raise WeightsError(
            f"encoder {name!r} needs weights: pass --weights PATH. {info.weights_hint}".strip()
        )
    if path is not None and not path.exists():
        raise WeightsError(f"{path}: no such weights file or directory")
    module = info.factory(path, allow_pickle=allow_pickle)
    state = module.state_dict() if hasattr(module, "state_dict") else {}
    bad = first_non_finite(state)
    if bad is not None:
        raise WeightsError(
            f"{path or name}: weight {bad!r} holds NaN or infinite values, so every embedding "
            "would be NaN; re-export the weights from their source"
        )
    # Adapters learn the real metadata (embed_dim, input size, normalisation) from the file.
    info = getattr(module, "encoder_info", None) or info
    return Encoder(info, module, device=device)
