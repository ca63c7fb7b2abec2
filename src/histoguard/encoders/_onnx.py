"""ONNX encoders: export any histoguard encoder, run an ``.onnx`` file with onnxruntime (CPU).

An exported file carries its :class:`EncoderInfo` as JSON in the ONNX ``metadata_props``
(key :data:`METADATA_KEY`), so loading it needs no extra arguments. ONNX files are protobuf
data, not code: loading one runs no Python.

What the export formats share (metadata JSON, the faithfulness check) is in ``_export``.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from histoguard.encoders._export import (
    Triple,
    check_same_features,
    example_batches,
    info_from_metadata,
    info_to_json,
)
from histoguard.encoders._registry import Encoder, EncoderInfo, register_encoder
from histoguard.errors import EncoderError, WeightsError

if TYPE_CHECKING:
    import onnxruntime

#: metadata_props key holding the EncoderInfo JSON.
METADATA_KEY = "histoguard.encoder"

_INPUT_NAME = "tiles"
_OUTPUT_NAME = "embeddings"


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
    mean: Triple | None = None,
    std: Triple | None = None,
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
    weights_hint="Pass a .onnx file written by histoguard.encoders.export_onnx.",
)
def _onnx_factory(weights: Path | None, *, allow_pickle: bool) -> torch.nn.Module:
    del allow_pickle  # ONNX is protobuf data; there is no pickle to allow
    if weights is None:
        raise WeightsError("encoder 'onnx' needs weights: pass the .onnx file")
    return load_onnx_encoder(weights).module
