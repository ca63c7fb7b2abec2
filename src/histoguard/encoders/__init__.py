"""Encoders: tiles in, embeddings out. One registry, one contract, weights from local files."""

from histoguard.core._image import ResizePolicy
from histoguard.core._weights import load_state_dict

# Imported for their registration side effect: the built-in encoders and the adapters for
# encoders users bring fill the registry (the registry itself imports none of them).
from histoguard.encoders import _adapters, _builtin  # noqa: F401
from histoguard.encoders._hf import load_hf_encoder
from histoguard.encoders._onnx import export_onnx, load_onnx_encoder
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
from histoguard.encoders._torchscript import export_torchscript, load_torchscript_encoder
from histoguard.encoders._training import (
    EncoderTrainingConfig,
    EncoderTrainingResult,
    TrainingTiles,
    train_encoder,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Encoder",
    "EncoderInfo",
    "EncoderTrainingConfig",
    "EncoderTrainingResult",
    "ResizePolicy",
    "TrainingTiles",
    "export_onnx",
    "export_torchscript",
    "get_encoder_info",
    "list_encoders",
    "load_encoder",
    "load_hf_encoder",
    "load_onnx_encoder",
    "load_state_dict",
    "load_torchscript_encoder",
    "register_encoder",
    "train_encoder",
]
