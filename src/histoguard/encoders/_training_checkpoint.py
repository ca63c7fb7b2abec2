"""Encoder-training checkpoints: after every epoch, ``out/checkpoint.safetensors`` (encoder,
head and AdamW state in one flat tensor file) and ``out/checkpoint.json`` (epoch, best epoch so
far, history, config, data hash), and the loop state read back from them on resume.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from histoguard._version import __version__
from histoguard.core._atomic import write_json_atomic
from histoguard.encoders._saving import ENCODER_WEIGHTS, module_state, save_tensors
from histoguard.encoders._training_steps import load_optimizer_tensors, optimizer_tensors, prefixed
from histoguard.errors import ConfigError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

CHECKPOINT_WEIGHTS = "checkpoint.safetensors"
CHECKPOINT_JSON = "checkpoint.json"


def start_or_resume(
    out: Path,
    identity: dict[str, Any],
    resume: bool,
    module: torch.nn.Module,
    head: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
) -> dict[str, Any]:
    """The loop's state: fresh, or read from ``out``'s checkpoint (module, head and optimizer
    restored in place)."""
    fresh: dict[str, Any] = {
        "epoch": 0, "best_epoch": 0, "best_acc": None, "best_loss": None, "since_best": 0,
        "history": [], "best_state": module_state(module),
    }  # fmt: skip
    meta_path = out / CHECKPOINT_JSON
    if not meta_path.exists():
        if resume:
            logger.warning("%s: no checkpoint to resume from; starting afresh", out)
        return fresh
    if not resume:
        raise ConfigError(
            f"{out}: holds a training checkpoint ({CHECKPOINT_JSON}); pass resume=True "
            "(--resume) to continue it, or choose another output folder"
        )
    from histoguard.core._weights import load_state_dict

    meta = json.loads(meta_path.read_text())
    saved = {k: meta.get(k) for k in identity}
    # The number of epochs may grow on resume; everything else must match.
    saved_config = dict(saved["config"] or {}, epochs=None, patience=None)
    if saved_config != dict(identity["config"], epochs=None, patience=None) or any(
        saved[k] != identity[k] for k in ("data_sha256", "classes")
    ):
        raise ConfigError(
            f"{out}: the checkpoint was made with another configuration or other tiles; resume "
            "with the same settings and tiles, or choose another output folder"
        )
    tensors = load_state_dict(out / CHECKPOINT_WEIGHTS)
    module.load_state_dict(prefixed(tensors, "encoder"), strict=True)
    head.load_state_dict(prefixed(tensors, "head"), strict=True)
    load_optimizer_tensors(optimizer, prefixed(tensors, "optim"))
    best_state = load_state_dict(out / ENCODER_WEIGHTS)
    state = {k: meta[k] for k in ("epoch", "best_epoch", "best_acc", "best_loss", "since_best")}
    logger.info("%s: resuming after epoch %d", out, state["epoch"])
    return {**state, "history": list(meta["history"]), "best_state": best_state}


def write_checkpoint(
    out: Path,
    identity: dict[str, Any],
    state: dict[str, Any],
    module: torch.nn.Module,
    head: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
) -> None:
    tensors = {f"encoder.{k}": v for k, v in module_state(module).items()}
    tensors |= {f"head.{k}": v for k, v in module_state(head).items()}
    tensors |= {k: v.cpu() for k, v in optimizer_tensors(optimizer).items()}
    save_tensors(tensors, out / CHECKPOINT_WEIGHTS)
    write_json_atomic(
        out / CHECKPOINT_JSON, {**identity, **state, "histoguard_version": __version__}
    )
