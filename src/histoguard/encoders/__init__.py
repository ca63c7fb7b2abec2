"""Encoders: tiles in, embeddings out. One registry, one contract, weights from local files."""

from histoguard.encoders._registry import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Encoder,
    EncoderInfo,
    get_encoder_info,
    list_encoders,
    load_encoder,
    register_encoder,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Encoder",
    "EncoderInfo",
    "get_encoder_info",
    "list_encoders",
    "load_encoder",
    "register_encoder",
]
