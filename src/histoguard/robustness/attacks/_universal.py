"""Universal adversarial perturbations: one additive pattern for all tiles (Moosavi-Dezfooli et al.
2017; for pathology encoders, UTAP), learned on some tiles, applied to unseen ones and transferred
to other encoders. Threat model and pixel pipeline: :mod:`histoguard.robustness.attacks._pgd`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import nn

from histoguard.errors import AuditDataError
from histoguard.robustness.data._containers import check_tiles

if TYPE_CHECKING:
    from histoguard.encoders import Encoder

from histoguard.robustness.attacks._pgd import (
    UniversalConfig,
    _ascent_direction,
    _classifier,
    _gradient,
    _project_ball,
    _to_images,
    _to_pixels,
)

# --------------------------------------------------------------------------- universal


def universal_perturbation(
    encoder: Encoder,
    head: nn.Module,
    tiles: np.ndarray,
    labels: np.ndarray,
    *,
    config: UniversalConfig | None = None,
) -> npt.NDArray[np.float32]:
    """One additive pattern that raises the cross-entropy of the true class on all tiles at once.

    The pattern lives at the size of the given tiles (before the encoder's resize), so it can be
    added to any tile of that size and fed to any encoder, whatever its input size. It starts at
    zero and is learned by projected stochastic gradient ascent over shuffled mini-batches
    (seeded), each tile clipped to [0, 1] after adding it.

    Args:
        encoder: a differentiable torch encoder.
        head: ``(B, D)`` -> ``(B, C)`` logits; moved to the encoder's device.
        tiles: ``(B, H, W, 3)`` uint8 training tiles.
        labels: ``(B,)`` int true classes in ``[0, C)``.
        config: budget, epochs, batch size, seed (defaults: L∞, 8/255, 5 epochs).

    Returns:
        ``(H, W, 3)`` float32 pattern in the 0–1 pixel scale, inside the ``eps``-ball.

    Raises:
        AuditDataError: tiles not ``(B, H, W, 3)`` uint8, or labels not one valid class per tile.
        EncoderError: the encoder passes no usable gradient to the pixels.
    """
    config = config or UniversalConfig()
    classifier, y_all = _classifier(encoder, head, tiles, labels)
    device = classifier.device
    step_size = config.resolved_step_size(len(tiles))
    n_batches = math.ceil(len(tiles) / config.batch_size)
    rng = np.random.default_rng(config.seed)
    delta = torch.zeros((1, 3, *tiles.shape[1:3]), device=device)
    for _ in range(config.epochs):
        for rows in np.array_split(rng.permutation(len(tiles)), n_batches):
            x0, y = _to_pixels(tiles[rows], device), torch.from_numpy(y_all[rows]).to(device)
            delta.requires_grad_(True)
            loss = F.cross_entropy(classifier((x0 + delta).clamp(0.0, 1.0)), y)
            grad = _gradient(loss, delta, encoder.info.name)
            step = step_size * _ascent_direction(grad, config.norm)
            delta = _project_ball(delta.detach() + step, config.eps, config.norm)
    pattern: npt.NDArray[np.float32] = _to_images(delta)[0]
    return pattern


def evaluate_perturbation(
    encoder: Encoder,
    head: nn.Module,
    tiles: np.ndarray,
    labels: np.ndarray,
    delta: np.ndarray,
    *,
    batch_size: int = 32,
) -> dict[str, float]:
    """Accuracy of ``encoder`` + ``head`` on tiles with and without a fixed additive pattern.

    Args:
        encoder, head: the pipeline to evaluate (need not be the one the pattern was learned on).
        tiles: ``(B, H, W, 3)`` uint8 tiles.
        labels: ``(B,)`` int true classes in ``[0, C)``.
        delta: ``(H, W, 3)`` float pattern, 0–1 pixel scale; each perturbed tile is clipped to
            [0, 1].
        batch_size: tiles per encoder call.

    Returns:
        ``n_tiles``, ``clean_accuracy``, ``perturbed_accuracy``, ``accuracy_drop`` (clean minus
        perturbed) and ``flip_rate``: the fraction of tiles whose predicted class changes (the
        "fooling rate"; needs no label).

    Raises:
        AuditDataError: bad tiles or labels, or a pattern whose shape is not ``(H, W, 3)`` of the
            tiles.
    """
    check_tiles(tiles)
    if np.shape(delta) != (*tiles.shape[1:3], 3):
        raise AuditDataError(
            f"the pattern is {np.shape(delta)} but the tiles are {tiles.shape[1:]}; resize the "
            "tiles to the size the pattern was learned at"
        )
    classifier, y = _classifier(encoder, head, tiles, labels)
    device = classifier.device
    pattern = torch.from_numpy(np.asarray(delta, np.float32)).permute(2, 0, 1)[None].to(device)
    clean, perturbed = [], []
    for start in range(0, len(tiles), batch_size):
        x0 = _to_pixels(tiles[start : start + batch_size], device)
        clean.append(classifier.predict(x0))
        perturbed.append(classifier.predict((x0 + pattern).clamp(0.0, 1.0)))
    clean_pred, perturbed_pred = torch.cat(clean).cpu().numpy(), torch.cat(perturbed).cpu().numpy()
    clean_accuracy = float((clean_pred == y).mean())
    perturbed_accuracy = float((perturbed_pred == y).mean())
    return {
        "n_tiles": len(tiles),
        "clean_accuracy": clean_accuracy,
        "perturbed_accuracy": perturbed_accuracy,
        "accuracy_drop": clean_accuracy - perturbed_accuracy,
        "flip_rate": float((perturbed_pred != clean_pred).mean()),
    }


@dataclass(frozen=True, kw_only=True, eq=False)
class UniversalResult:
    """A universal perturbation and its effect on training, unseen and other encoders' tiles.

    Attributes:
        config: the settings.
        source: name of the encoder the pattern was learned on.
        step_size: the step length used, 0–1 pixel scale.
        perturbation: ``(H, W, 3)`` float32 pattern (left out of :meth:`to_dict`).
        train, unseen: :func:`evaluate_perturbation` on the training and the unseen test tiles
            (source encoder and head).
        transfer: the same on the unseen tiles for each target ``{name: ...}``.
    """

    config: UniversalConfig
    source: str
    step_size: float
    perturbation: npt.NDArray[np.float32]
    train: dict[str, float]
    unseen: dict[str, float]
    transfer: dict[str, dict[str, float]]

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible summary and parameters (not the pattern itself)."""
        pattern = self.perturbation.astype(np.float64)
        return {
            "eps": self.config.eps,
            "norm": self.config.norm,
            "source": self.source,
            "perturbation": {
                "linf": float(np.abs(pattern).max()),
                "l2": float(np.linalg.norm(pattern)),
            },
            "train_accuracy_drop": self.train["accuracy_drop"],
            "train": dict(self.train),
            "unseen": dict(self.unseen),
            "transfer": {name: dict(effect) for name, effect in self.transfer.items()},
            "parameters": {**self.config.to_dict(), "step_size": self.step_size},
        }


def universal_attack(
    source: tuple[Encoder, nn.Module],
    targets: Mapping[str, tuple[Encoder, nn.Module]],
    *,
    train_tiles: np.ndarray,
    train_labels: np.ndarray,
    test_tiles: np.ndarray,
    test_labels: np.ndarray,
    config: UniversalConfig | None = None,
) -> UniversalResult:
    """Learn a universal pattern on ``source`` with the training tiles, then measure it on the
    unseen test tiles, for the source and for every other ``(encoder, head)`` in ``targets``.

    Args:
        source: the encoder and head the pattern is learned against.
        targets: other pipelines to transfer to, by name (each head fits its own encoder).
        train_tiles, test_tiles: ``(B, H, W, 3)`` uint8 tiles of one size.
        train_labels, test_labels: ``(B,)`` int classes in ``[0, C)``.
        config: budget and schedule.

    Raises:
        AuditDataError: bad tiles or labels, or train and test tiles of different sizes.
        EncoderError: the source encoder passes no usable gradient to the pixels.
    """
    config = config or UniversalConfig()
    encoder, head = source
    delta = universal_perturbation(encoder, head, train_tiles, train_labels, config=config)
    return UniversalResult(
        config=config,
        source=encoder.info.name,
        step_size=config.resolved_step_size(len(train_tiles)),
        perturbation=delta,
        train=evaluate_perturbation(encoder, head, train_tiles, train_labels, delta),
        unseen=evaluate_perturbation(encoder, head, test_tiles, test_labels, delta),
        transfer={
            name: evaluate_perturbation(other, other_head, test_tiles, test_labels, delta)
            for name, (other, other_head) in targets.items()
        },
    )
