"""TorchScript encoders: export any histoguard encoder by tracing, load it without its code.

The archive stores the :class:`EncoderInfo` as JSON in the extra file :data:`EXTRA_FILE`, so
loading needs no extra arguments.

Safety: a TorchScript archive is a zip holding pickles, but ``torch.jit.load`` reads them with
TorchScript's own unpickler, which rebuilds only tensors and TorchScript types and never
imports or calls arbitrary Python objects; the archive's code is TorchScript, run by the
TorchScript interpreter, not Python. It is still a program: load archives you trust. A plain
pickle or a ``torch.save`` checkpoint is not an archive and is refused without being unpickled.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from histoguard.core._atomic import atomic_output
from histoguard.encoders._export import (
    Triple,
    check_same_features,
    example_batches,
    info_from_metadata,
    info_to_json,
)
from histoguard.encoders._registry import Encoder, EncoderInfo, register_encoder
from histoguard.errors import EncoderError, WeightsError

#: Name of the extra file holding the EncoderInfo JSON inside the archive.
EXTRA_FILE = "histoguard.json"

_ZIP_MAGIC = b"PK\x03\x04"


class TorchScriptEncoderModule(torch.nn.Module):
    """Wraps a loaded TorchScript module: ``(B, 3, S, S)`` tiles -> ``(B, D)`` embeddings.

    Args:
        scripted: the module ``torch.jit.load`` returned.
        info: the metadata the archive was loaded with (exposed as ``encoder_info``).
    """

    def __init__(self, scripted: torch.nn.Module, info: EncoderInfo) -> None:
        super().__init__()
        self.scripted = scripted
        self.encoder_info = info

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.scripted(tiles)
        return out


def export_torchscript(encoder: Encoder, path: str | Path, *, verify: bool = True) -> Path:
    """Trace an encoder's module to a TorchScript archive carrying its metadata.

    ``torch.jit.trace`` on a ``(2, 3, S, S)`` batch, saved with ``encoder.info`` as JSON in the
    extra file :data:`EXTRA_FILE`. The archive appears at ``path`` only once written and, with
    ``verify``, once the reloaded archive reproduces the module's embeddings on a batch of
    another size (so a batch size baked in by tracing is caught).

    Returns:
        ``path``.

    Raises:
        EncoderError: tracing fails, or the archive does not reproduce the embeddings.
    """
    path = Path(path)
    module = encoder.module.eval()
    traced_batch, check = example_batches(encoder)
    try:
        with _quiet_jit(), torch.no_grad():
            traced = torch.jit.trace(module, (traced_batch,))
    except Exception as exc:  # tracing failures span many types; all mean "cannot export"
        raise EncoderError(f"cannot trace encoder {encoder.info.name!r}: {exc}") from exc

    def verify_archive(tmp: Path) -> None:
        if verify:
            reloaded = load_torchscript_encoder(tmp, device=encoder.device)
            check_same_features(encoder, reloaded.module, check, "TorchScript")

    with atomic_output(path, verify=verify_archive) as tmp, _quiet_jit():
        torch.jit.save(traced, str(tmp), _extra_files={EXTRA_FILE: info_to_json(encoder.info)})
    return path


def load_torchscript_encoder(
    path: str | Path,
    *,
    embed_dim: int | None = None,
    input_size: int | None = None,
    mean: Triple | None = None,
    std: Triple | None = None,
    device: str = "cpu",
) -> Encoder:
    """Load a TorchScript archive as an :class:`Encoder`.

    Metadata comes from the archive's :data:`EXTRA_FILE`; arguments given override it and
    are required for archives histoguard did not write.

    Raises:
        WeightsError: missing file, not a TorchScript archive (a pickle is refused unread),
            or malformed metadata.
        EncoderError: metadata needed and absent.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such TorchScript file")
    with path.open("rb") as handle:
        if handle.read(4) != _ZIP_MAGIC:
            raise WeightsError(f"{path}: not a TorchScript archive (not a zip file)")
    extra: dict[str, Any] = {EXTRA_FILE: ""}  # torch.jit.load fills in bytes
    try:
        with _quiet_jit():
            scripted = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    except Exception as exc:  # RuntimeError for non-archives, others for corrupt ones
        raise WeightsError(f"{path}: not a loadable TorchScript archive ({exc})") from exc
    stored = extra[EXTRA_FILE]
    text = stored.decode("utf-8", "replace") if isinstance(stored, bytes) else stored
    info = info_from_metadata(
        path,
        text or None,
        factory=_torchscript_factory,
        default_name="torchscript",
        embed_dim=embed_dim,
        input_size=input_size,
        mean=mean,
        std=std,
    )
    return Encoder(info, TorchScriptEncoderModule(scripted, info), device=device)


@contextmanager
def _quiet_jit() -> Iterator[None]:
    # torch marks torch.jit as deprecated; users choosing this format on purpose can do
    # nothing about the warning, so it is not repeated on every export and load.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*", category=DeprecationWarning)
        yield


@register_encoder(
    "torchscript",
    # Placeholders: the real values come from the archive (load_torchscript_encoder).
    embed_dim=0,
    input_size=224,
    needs_weights=True,
    description="TorchScript archive; metadata read from the archive",
    weights_hint="Pass a .pt archive written by histoguard.encoders._torchscript."
    "export_torchscript.",
)
def _torchscript_factory(weights: Path | None, *, allow_pickle: bool) -> torch.nn.Module:
    del allow_pickle  # torch.jit.load does not unpickle Python objects (see module docstring)
    if weights is None:
        raise WeightsError("encoder 'torchscript' needs weights: pass the TorchScript archive")
    return load_torchscript_encoder(weights).module
