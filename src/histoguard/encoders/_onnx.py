"""ONNX encoders: export any histoguard encoder, run an ``.onnx`` file with onnxruntime (CPU).

An exported file carries its :class:`EncoderInfo` as JSON in the ONNX ``metadata_props``
(key :data:`METADATA_KEY`), so loading it needs no extra arguments. ONNX files are protobuf
data, not code: loading one runs no Python.

This module also holds what the export formats share (metadata JSON, the check that an export
reproduces the original's features); ``_torchscript`` imports it from here.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from histoguard._exceptions import EncoderError, WeightsError
from histoguard.encoders._registry import Encoder, EncoderFactory, EncoderInfo, register_encoder

if TYPE_CHECKING:
    import onnxruntime

#: metadata_props key holding the EncoderInfo JSON.
METADATA_KEY = "histoguard.encoder"

#: An export must reproduce the original's embeddings to this fraction of their largest
#: magnitude; float32 reordering stays orders of magnitude below, a wrong graph far above.
EXPORT_RTOL = 1e-3

_INPUT_NAME = "tiles"
_OUTPUT_NAME = "embeddings"
_Triple = tuple[float, float, float]


class OnnxEncoderModule(torch.nn.Module):
    """Runs an onnxruntime session as a torch module.

    ``forward``: ``(B, 3, S, S)`` float32 tensor on any device -> numpy -> ``session.run`` on
    the CPU -> ``(B, D)`` float32 tensor back on the input's device. No autograd.

    Args:
        session: an onnxruntime session with one float image input and the embedding as its
            first output.
        info: the metadata the file was loaded with (exposed as ``encoder_info``), if known.
    """

    def __init__(self, session: onnxruntime.InferenceSession, info: EncoderInfo | None) -> None:
        super().__init__()
        self.session = session
        self.input_name: str = session.get_inputs()[0].name
        self.output_name: str = session.get_outputs()[0].name
        self.encoder_info = info

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        array = tiles.detach().to("cpu", torch.float32).numpy()
        (out,) = self.session.run([self.output_name], {self.input_name: array})
        return torch.from_numpy(out).to(tiles.device)


def open_onnx_session(path: Path) -> onnxruntime.InferenceSession:
    """An onnxruntime CPU session for ``path``, checked to take one image batch.

    Raises:
        WeightsError: missing file, not a loadable ONNX model, or not one input.
        EncoderError: onnxruntime is not installed.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such ONNX file")
    try:
        import onnxruntime
    except ImportError as exc:
        raise EncoderError("ONNX encoders need onnxruntime: pip install histoguard[onnx]") from exc
    try:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
        raise WeightsError(f"{path}: onnxruntime cannot load this model ({exc})") from exc
    inputs = session.get_inputs()
    if len(inputs) != 1 or len(session.get_outputs()) < 1:
        raise WeightsError(
            f"{path}: expected one input (B, 3, S, S) and an embedding output, found "
            f"{len(inputs)} inputs"
        )
    return session


def load_onnx_encoder(
    path: str | Path,
    *,
    embed_dim: int | None = None,
    input_size: int | None = None,
    mean: _Triple | None = None,
    std: _Triple | None = None,
    device: str = "cpu",
) -> Encoder:
    """Load an ``.onnx`` encoder; metadata from the file, overridden by any argument given.

    Files written by :func:`export_onnx` need no arguments. For other files, ``embed_dim`` and
    ``input_size`` default to the graph's static output width and input side when it has them;
    ``mean`` and ``std`` must then be given, because guessing a normalisation would silently
    degrade every embedding.

    Raises:
        WeightsError: missing or unloadable file, or malformed histoguard metadata.
        EncoderError: onnxruntime is not installed, or metadata needed and absent.
    """
    path = Path(path)
    session = open_onnx_session(path)
    stored = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    inferred = {"embed_dim": _static_dim(session.get_outputs()[0].shape, -1)}
    inferred["input_size"] = _static_dim(session.get_inputs()[0].shape, -1)
    info = info_from_metadata(
        path,
        stored,
        factory=_onnx_factory,
        default_name="onnx",
        embed_dim=embed_dim,
        input_size=input_size,
        mean=mean,
        std=std,
        fallback=inferred,
    )
    return Encoder(info, OnnxEncoderModule(session, info), device=device)


def export_onnx(encoder: Encoder, path: str | Path, *, verify: bool = True) -> Path:
    """Export an encoder's module to ONNX with a dynamic batch axis and its metadata.

    Uses ``torch.onnx.export(dynamo=True)`` (the torch.export-based exporter; it needs
    onnxscript, no network). The input is named ``tiles`` ``(batch, 3, S, S)``, the output
    ``embeddings`` ``(batch, D)``; ``encoder.info`` is stored as JSON under
    :data:`METADATA_KEY`. Models above 2 GB get their weights in ``<name>.data`` beside the
    file. The file appears at ``path`` only once written completely and, with ``verify``,
    once onnxruntime reproduces the module's embeddings on a batch of a different size than
    the one traced (to within :data:`EXPORT_RTOL` of their scale).

    Returns:
        ``path``.

    Raises:
        EncoderError: onnx/onnxscript/onnxruntime missing, the exporter fails, or the export
            does not reproduce the module's embeddings.
    """
    path = Path(path)
    module = encoder.module.eval()
    traced, check = example_batches(encoder)
    try:
        with torch.no_grad():
            program = torch.onnx.export(
                module,
                (traced,),
                dynamo=True,
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                input_names=[_INPUT_NAME],
                output_names=[_OUTPUT_NAME],
                verbose=False,
            )
    except ImportError as exc:
        raise EncoderError(
            "ONNX export needs onnx and onnxscript: pip install histoguard[onnx]"
        ) from exc
    except Exception as exc:  # the exporter's failures span many types; all mean "cannot export"
        raise EncoderError(f"cannot export encoder {encoder.info.name!r} to ONNX: {exc}") from exc
    if program is None:  # pragma: no cover - only when f= is given
        raise EncoderError("torch.onnx.export returned no program")
    program.model.metadata_props[METADATA_KEY] = info_to_json(encoder.info)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Staged in a hidden sibling directory: the exporter names any external-data file after
    # the model file, so both are written under their final names and moved only when good.
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.tmp-") as tmp:
        staged = Path(tmp) / path.name
        program.save(str(staged))
        if verify:
            session = open_onnx_session(staged)
            check_same_features(encoder, OnnxEncoderModule(session, None), check, "ONNX")
            del session  # release the file before moving it (Windows)
        for file in sorted(Path(tmp).iterdir(), key=lambda f: f == staged):
            shutil.move(str(file), path.parent / file.name)  # external data first, model last
    return path


# --- Shared by the export formats ----------------------------------------------------------


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
    mean: _Triple | None = None,
    std: _Triple | None = None,
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


def as_triple(value: Any) -> _Triple:
    """``value`` as 3 floats if it is a list or tuple of 3 numbers; else ValueError."""
    if (
        not isinstance(value, list | tuple)
        or len(value) != 3
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    ):
        raise ValueError(f"expected 3 numbers, got {value!r}")
    return (float(value[0]), float(value[1]), float(value[2]))


def _static_dim(shape: list[Any], index: int) -> int | None:
    # onnxruntime reports symbolic dimensions as strings (or None).
    value = shape[index] if shape else None
    return value if isinstance(value, int) and value > 0 else None


@register_encoder(
    "onnx",
    # Placeholders: the real values come from the file (load_onnx_encoder).
    embed_dim=0,
    input_size=224,
    needs_weights=True,
    description="ONNX model run with onnxruntime on the CPU; metadata read from the file",
    weights_hint="Pass a .onnx file written by histoguard.encoders._onnx.export_onnx.",
)
def _onnx_factory(weights: Path | None, *, allow_pickle: bool) -> torch.nn.Module:
    del allow_pickle  # ONNX is protobuf data; there is no pickle to allow
    if weights is None:
        raise WeightsError("encoder 'onnx' needs weights: pass the .onnx file")
    return load_onnx_encoder(weights).module
