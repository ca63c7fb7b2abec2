"""What the export formats (ONNX, TorchScript) and the model-directory adapter share: the
encoder metadata stored inside an exported file, and the check that an export is faithful."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from histoguard.core._image import ResizePolicy
from histoguard.encoders._registry import Encoder, EncoderFactory, EncoderInfo
from histoguard.errors import EncoderError, WeightsError

#: An export must reproduce the original's embeddings to this fraction of their largest
#: magnitude; float32 reordering stays orders of magnitude below, a wrong graph far above.
EXPORT_RTOL = 1e-3

Triple = tuple[float, float, float]


def info_to_json(info: EncoderInfo) -> str:
    """The metadata an export stores: :meth:`EncoderInfo.to_dict` as JSON."""
    return json.dumps(info.to_dict(), sort_keys=True)


def info_from_metadata(
    source: Path,
    stored: str | None,
    *,
    factory: EncoderFactory,
    default_name: str,
    embed_dim: int | None = None,
    input_size: int | None = None,
    mean: Triple | None = None,
    std: Triple | None = None,
    fallback: dict[str, int | None] | None = None,
) -> EncoderInfo:
    """Rebuild an exported encoder's :class:`EncoderInfo`.

    Precedence per field: the explicit argument, then the stored JSON (``stored``, from
    :func:`info_to_json`), then ``fallback`` (values read from the model graph).

    Raises:
        WeightsError: the stored JSON is malformed.
        EncoderError: embed_dim, input_size, mean or std known from nowhere.
    """
    fields: dict[str, Any] = {}
    if stored is not None:
        try:
            fields = json.loads(stored)
        except ValueError as exc:
            raise WeightsError(f"{source}: histoguard metadata is not valid JSON ({exc})") from exc
        if not isinstance(fields, dict):
            raise WeightsError(f"{source}: histoguard metadata is not a JSON object")
    explicit = {"embed_dim": embed_dim, "input_size": input_size, "mean": mean, "std": std}
    fields.update({key: value for key, value in explicit.items() if value is not None})
    for key, value in (fallback or {}).items():
        if fields.get(key) is None and value is not None:
            fields[key] = value
    missing = [key for key in explicit if fields.get(key) is None]
    if missing:
        raise EncoderError(
            f"{source}: no histoguard metadata for {', '.join(missing)}; pass them "
            "(the embedding size, tile side, and the normalisation the model was trained with)"
        )
    try:
        return EncoderInfo(
            name=_typed(fields.get("name", default_name), str),
            embed_dim=as_positive_int(fields["embed_dim"]),
            input_size=as_positive_int(fields["input_size"]),
            mean=as_triple(fields["mean"]),
            std=as_triple(fields["std"]),
            licence=_typed(fields.get("licence", ""), str),
            gated=_typed(fields.get("gated", False), bool),
            needs_weights=True,
            citation=_typed(fields.get("citation", ""), str),
            description=_typed(fields.get("description", ""), str),
            weights_hint=_typed(fields.get("weights_hint", ""), str),
            factory=factory,
            resize=ResizePolicy.from_dict(_typed(fields.get("resize", {}), dict)),
        )
    except (TypeError, ValueError) as exc:
        raise WeightsError(f"{source}: malformed histoguard metadata ({exc})") from exc


def example_batches(encoder: Encoder) -> tuple[torch.Tensor, torch.Tensor]:
    """Two deterministic random batches ``(2, 3, S, S)`` and ``(3, 3, S, S)`` on the encoder's
    device: one to trace or export with, one of another size to check the batch axis."""
    size = encoder.info.input_size
    generator = torch.Generator().manual_seed(0)
    traced = torch.randn(2, 3, size, size, generator=generator)
    check = torch.randn(3, 3, size, size, generator=generator)
    return traced.to(encoder.device), check.to(encoder.device)


def check_same_features(
    encoder: Encoder, exported: torch.nn.Module, batch: torch.Tensor, fmt: str
) -> None:
    """Raise unless ``exported`` reproduces ``encoder.module`` on ``batch``.

    Raises:
        EncoderError: shapes differ, or values differ by more than :data:`EXPORT_RTOL` of the
            reference's largest magnitude (at least 1).
    """
    with torch.no_grad():
        expected = encoder.module(batch).float().cpu()
        got = exported(batch).float().cpu()
    if got.shape != expected.shape:
        raise EncoderError(
            f"{fmt} export of {encoder.info.name!r} returns shape {tuple(got.shape)}, "
            f"the original {tuple(expected.shape)}"
        )
    error = float((got - expected).abs().max()) if got.numel() else 0.0
    scale = max(1.0, float(expected.abs().max())) if expected.numel() else 1.0
    if not error <= EXPORT_RTOL * scale:  # also catches NaN
        raise EncoderError(
            f"{fmt} export of {encoder.info.name!r} differs from the original by {error:.3g} "
            f"(embeddings up to {scale:.3g}); the export is not faithful"
        )


def _typed(value: Any, kind: type) -> Any:
    if not isinstance(value, kind):
        raise TypeError(f"expected {kind.__name__}, got {value!r}")
    return value


def as_positive_int(value: Any) -> int:
    """``value`` if it is a positive integer (not a bool); else ValueError."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"expected a positive integer, got {value!r}")
    return value


def as_triple(value: Any) -> Triple:
    """``value`` as 3 floats if it is a list or tuple of 3 numbers; else ValueError."""
    if (
        not isinstance(value, list | tuple)
        or len(value) != 3
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    ):
        raise ValueError(f"expected 3 numbers, got {value!r}")
    return (float(value[0]), float(value[1]), float(value[2]))
