"""Write a trained encoder: its state dict as safetensors, verified by reading it back, and a JSON
provenance record beside it.

Both ways of training an encoder (``train_encoder`` from tile labels, ``train_end_to_end`` from
slide labels) publish through here, so what ``load_encoder(name, weights=...)`` and ``histoguard
extract --weights`` read is written one way.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from histoguard._version import __version__
from histoguard.core._atomic import atomic_output, write_json_atomic

if TYPE_CHECKING:
    import torch

    from histoguard.encoders._registry import Encoder

#: The trained encoder's weights and provenance, inside a training output folder.
ENCODER_WEIGHTS = "encoder.safetensors"
ENCODER_JSON = "encoder.json"


def module_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached, contiguous CPU copy of ``module``'s state dict (safe to keep while training
    goes on)."""
    return {k: v.detach().cpu().clone().contiguous() for k, v in module.state_dict().items()}


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Write ``tensors`` to ``path`` (safetensors) atomically; published only after every tensor
    read back equals what was written.

    Raises:
        OSError: the read-back differs (the final file is then left untouched).
    """
    import torch
    from safetensors.torch import save_file

    from histoguard.core._weights import load_state_dict

    def verify(tmp: Path) -> None:
        loaded = load_state_dict(tmp)
        if loaded.keys() != tensors.keys() or any(
            not torch.equal(loaded[k], tensors[k]) for k in tensors
        ):
            raise OSError(f"{path}: tensors read back differ from what was written")

    with atomic_output(path, verify=verify) as tmp:
        save_file(tensors, str(tmp))


def save_encoder(encoder: Encoder, out: Path, provenance: Mapping[str, Any]) -> Path:
    """Write ``out/encoder.safetensors`` (the encoder module's state dict) and
    ``out/encoder.json`` (``provenance`` plus the encoder's name, embedding width, input size
    in pixels, the weights' SHA-256 and the histoguard version).

    Returns:
        The weights file, loadable by ``load_encoder(name, weights=...)``.
    """
    from histoguard.core._weights import sha256_file

    path = out / ENCODER_WEIGHTS
    save_tensors(module_state(encoder.module), path)
    description = {
        **provenance,
        "encoder": encoder.info.name,
        "embed_dim": encoder.embed_dim,
        "input_size": encoder.info.input_size,
        "weights_file": ENCODER_WEIGHTS,
        "weights_sha256": sha256_file(path),
        "histoguard_version": __version__,
    }
    write_json_atomic(out / ENCODER_JSON, description, default=float)
    return path
