"""Adversarial attacks: how little must a tile's pixels change to change a prediction built on an
encoder, for one tile, for every tile at once, and for a whole slide?

Threat model, shared by every attack here: pixels are RGB divided by 255, in [0, 1]; a
perturbation is bounded in L∞ (largest change of any one value) or L2 (Euclidean norm over all
``H * W * 3`` values of a tile), in that same 0–1 scale, and the perturbed tile is kept in
[0, 1]. The attacked pipeline is differentiated end to end: pixels -> the encoder's own
preprocessing (its resize policy to its input size, normalisation; as
:meth:`~histoguard.encoders.Encoder.preprocess`) -> ``encoder.module`` -> a head or a MIL model.

- :func:`pgd_attack`: projected gradient descent (Madry et al. 2018) per tile, untargeted.
- :func:`universal_perturbation`, :func:`evaluate_perturbation`, :func:`universal_attack`: one
  additive pattern for all tiles (Moosavi-Dezfooli et al. 2017; for pathology encoders, UTAP),
  learned on some tiles, applied to unseen ones and transferred to other encoders.
- the slide-level attack on a MIL model lives in :mod:`histoguard.robustness.attacks._slide_attack`
  and reuses this module's pipeline and PGD.

Encoders that pass no usable gradient to the pixels (ONNX sessions, ``hg-handcrafted`` whose
spectral features have undefined gradients) raise :class:`~histoguard.errors.EncoderError`.
Every random choice comes from the config's ``seed``. Modules are put in evaluation mode.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from histoguard.core._image import resize_tiles
from histoguard.errors import AuditDataError, ConfigError, EncoderError
from histoguard.robustness.data._containers import check_tiles

if TYPE_CHECKING:
    from histoguard.encoders import Encoder

Norm = Literal["linf", "l2"]
_NORMS = ("linf", "l2")

#: Loss of perturbed pixels ``(B, 3, H, W)``: ``(B,)`` one per tile, or ``(1,)`` for a slide;
#: attacks ascend its sum.
LossFn = Callable[[Tensor], Tensor]


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True, kw_only=True)
class _Budget:
    """What every attack shares: the norm and radius of the allowed perturbation, the step
    length, and a seed.

    Attributes:
        norm: ``"linf"`` or ``"l2"``.
        eps: radius of the ball, 0–1 pixel scale (L2: over all ``H * W * 3`` values of a tile).
        step_size: length of one ascent step (signed gradient for L∞, normalised gradient for
            L2), 0–1 pixel scale; None: the attack's default, ``2.5 * eps / number of steps``.
        seed: seeds every random choice of the attack.
    """

    norm: Norm = "linf"
    eps: float = 8 / 255
    step_size: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.norm not in _NORMS:
            raise ConfigError(f"norm must be one of {_NORMS}, got {self.norm!r}")
        if not (math.isfinite(self.eps) and self.eps >= 0):
            raise ConfigError(f"eps must be a finite number >= 0 (0–1 pixel scale), got {self.eps}")
        if self.step_size is not None and not self.step_size > 0:
            raise ConfigError(f"step_size must be > 0 or None (default), got {self.step_size}")

    def _require_positive(self, *names: str) -> None:
        for name in names:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible settings."""
        return dataclasses.asdict(self)


@dataclass(frozen=True, kw_only=True)
class PGDConfig(_Budget):
    """Projected gradient descent: ``steps`` ascent steps, each followed by projection onto the
    ``eps``-ball and onto [0, 1]. ``step_size`` defaults to ``2.5 * eps / steps``, enough to
    cross the ball and come back (Madry et al. 2018).

    Attributes:
        steps: gradient steps.
        random_start: start at a random point of the ball (uniform in the L∞ box; for L2 a random
            direction at a uniform radius) instead of at the clean tile.
        batch_size: tiles attacked per encoder call (memory only; tiles are independent).
    """

    steps: int = 10
    random_start: bool = True
    batch_size: int = 32

    def __post_init__(self) -> None:
        super().__post_init__()
        self._require_positive("steps", "batch_size")

    @property
    def resolved_step_size(self) -> float:
        """The step length actually used, 0–1 pixel scale."""
        return self.step_size if self.step_size is not None else 2.5 * self.eps / self.steps

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible settings, with the step size actually used."""
        return {**super().to_dict(), "step_size": self.resolved_step_size}


@dataclass(frozen=True, kw_only=True)
class UniversalConfig(_Budget):
    """A universal perturbation: one pattern, learned by projected stochastic gradient ascent of
    the cross-entropy over shuffled mini-batches of training tiles. ``step_size`` defaults to
    ``2.5 * eps / (epochs * batches per epoch)``, as in :class:`PGDConfig`.

    Attributes:
        epochs: passes over the training tiles.
        batch_size: tiles per gradient step.
    """

    epochs: int = 5
    batch_size: int = 16

    def __post_init__(self) -> None:
        super().__post_init__()
        self._require_positive("epochs", "batch_size")

    def resolved_step_size(self, n_tiles: int) -> float:
        """The step length used on ``n_tiles`` training tiles, 0–1 pixel scale."""
        if self.step_size is not None:
            return self.step_size
        return 2.5 * self.eps / (self.epochs * math.ceil(n_tiles / self.batch_size))


# --------------------------------------------------------------------------- the pipeline


class PixelEncoder(nn.Module):
    """An encoder as a differentiable function of pixels: ``(B, 3, H, W)`` RGB in [0, 1] ->
    ``(B, D)`` embeddings, with the same resize and normalisation as ``Encoder.preprocess``.

    Args:
        encoder: a loaded encoder; its module is shared, not copied, and put in eval mode.
    """

    mean: Tensor
    std: Tensor

    def __init__(self, encoder: Encoder) -> None:
        super().__init__()
        self.name = encoder.info.name
        self.size = encoder.info.input_size
        self.resize = encoder.info.resize
        self.device = torch.device(encoder.device)
        self.module = encoder.module.eval()
        view = (1, 3, 1, 1)
        self.register_buffer("mean", torch.tensor(encoder.info.mean).view(view), persistent=False)
        self.register_buffer("std", torch.tensor(encoder.info.std).view(view), persistent=False)
        self.to(self.device)

    def forward(self, pixels: Tensor) -> Tensor:
        """``(B, 3, H, W)`` float32 in [0, 1] -> ``(B, D)`` float32."""
        pixels = resize_tiles(pixels, self.size, self.resize)
        out: Tensor = self.module((pixels - self.mean) / self.std)
        return out

    @torch.no_grad()
    def embed(self, tiles: np.ndarray, batch_size: int) -> Tensor:
        """Clean embeddings of ``(N, H, W, 3)`` uint8 tiles: ``(N, D)`` float32, no gradient."""
        return torch.cat(
            [self(_to_pixels(tiles[i : i + batch_size], self.device))
             for i in range(0, len(tiles), batch_size)]
        )  # fmt: skip


class _TileClassifier(nn.Module):
    """pixels ``(B, 3, H, W)`` in [0, 1] -> logits ``(B, C)``: a :class:`PixelEncoder`, then the
    head (moved to the encoder's device, in eval mode)."""

    def __init__(self, encoder: Encoder, head: nn.Module) -> None:
        super().__init__()
        self.encoder = PixelEncoder(encoder)
        self.head = head.to(self.encoder.device).eval()
        self.name = self.encoder.name
        self.device = self.encoder.device

    def forward(self, pixels: Tensor) -> Tensor:
        logits: Tensor = self.head(self.encoder(pixels))
        return logits

    @torch.no_grad()
    def predict(self, pixels: Tensor) -> Tensor:
        """Predicted class ``(B,)`` of pixels ``(B, 3, H, W)``."""
        return self.forward(pixels).argmax(dim=1)


def _classifier(
    encoder: Encoder, head: nn.Module, tiles: np.ndarray, labels: np.ndarray
) -> tuple[_TileClassifier, npt.NDArray[np.int64]]:
    """The pixel-to-logits pipeline, and the labels checked against the tiles and its output.

    Raises:
        AuditDataError: see :func:`check_tiles` and :func:`_check_labels`.
    """
    check_tiles(tiles)
    classifier = _TileClassifier(encoder, head)
    with torch.no_grad():
        n_classes = int(classifier(_to_pixels(tiles[:1], classifier.device)).shape[1])
    return classifier, _check_labels(labels, len(tiles), n_classes)


def _to_pixels(tiles: np.ndarray, device: torch.device) -> Tensor:
    """``(B, H, W, 3)`` uint8 -> ``(B, 3, H, W)`` float32 in [0, 1] on ``device``."""
    # torch.tensor copies, so read-only arrays (memory maps, shared fixtures) are fine.
    return (torch.tensor(tiles).permute(0, 3, 1, 2).float() / 255.0).to(device)


def _to_images(pixels: Tensor) -> npt.NDArray[np.float32]:
    """``(B, 3, H, W)`` -> ``(B, H, W, 3)`` float32 numpy."""
    images: npt.NDArray[np.float32] = pixels.detach().permute(0, 2, 3, 1).float().cpu().numpy()
    return images


# --------------------------------------------------------------------------- PGD machinery


def _gradient(loss: Tensor, wrt: Tensor, name: str) -> Tensor:
    """d loss / d wrt, or EncoderError when the pipeline passes no usable gradient."""
    fix = "attack a torch encoder (hg-cnn, hg-d4, timm or Hugging Face weights) instead"
    if not loss.requires_grad:
        raise EncoderError(
            f"encoder {name!r} (with its head) is not differentiable: its output carries no "
            f"gradient (ONNX or detached module); {fix}"
        )
    (grad,) = torch.autograd.grad(loss, wrt, allow_unused=True)
    if grad is None:
        raise EncoderError(
            f"encoder {name!r} (with its head) is not differentiable: no gradient reaches the "
            f"pixels; {fix}"
        )
    if not bool(torch.isfinite(grad).all()):
        raise EncoderError(
            f"encoder {name!r} (with its head) is not differentiable: its pixel gradients are "
            f"NaN or infinite; {fix}"
        )
    return grad


def _per_tile_l2(x: Tensor) -> Tensor:
    """``(B, ...)`` -> ``(B, 1, 1, 1)`` L2 norm of each tile, for broadcasting."""
    norms: Tensor = torch.linalg.vector_norm(x.flatten(1), dim=1)
    return norms.view(-1, 1, 1, 1)


def _ascent_direction(grad: Tensor, norm: Norm) -> Tensor:
    """The steepest-ascent direction of unit norm: the sign (L∞) or the normalised gradient."""
    if norm == "linf":
        return grad.sign()
    return grad / _per_tile_l2(grad).clamp(min=1e-12)


def _project_ball(delta: Tensor, eps: float, norm: Norm) -> Tensor:
    """Each tile's perturbation ``(B, 3, H, W)`` projected onto its own ``eps``-ball."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    return delta * (eps / _per_tile_l2(delta).clamp(min=1e-12)).clamp(max=1.0)


def _project(delta: Tensor, x0: Tensor, eps: float, norm: Norm) -> Tensor:
    """Onto the ball, then into [0, 1]; clamping only shrinks components, so the result stays
    inside the ball."""
    return (x0 + _project_ball(delta, eps, norm)).clamp(0.0, 1.0) - x0


def _random_start(x0: Tensor, config: PGDConfig, generator: torch.Generator) -> Tensor:
    """A random point of the ball, drawn on the CPU so a seed gives the same start anywhere."""
    shape = x0.shape
    if config.norm == "linf":
        delta = (torch.rand(shape, generator=generator) * 2.0 - 1.0) * config.eps
    else:
        direction = torch.randn(shape, generator=generator)
        radius = torch.rand((shape[0], 1, 1, 1), generator=generator) * config.eps
        delta = direction / _per_tile_l2(direction).clamp(min=1e-12) * radius
    return delta.to(x0.device)


def _pgd(
    loss_fn: LossFn, x0: Tensor, config: PGDConfig, generator: torch.Generator, name: str
) -> Tensor:
    """Adversarial pixels ``(B, 3, H, W)`` in [0, 1]: the last iterate (as Madry et al.) of
    ``config.steps`` projected ascent steps on ``loss_fn(x0 + delta).sum()``.

    Raises:
        EncoderError: the pipeline passes no usable gradient to the pixels.
    """
    delta = _random_start(x0, config, generator) if config.random_start else torch.zeros_like(x0)
    delta = _project(delta, x0, config.eps, config.norm)
    for _ in range(config.steps):
        delta.requires_grad_(True)
        grad = _gradient(loss_fn(x0 + delta).sum(), delta, name)
        step = config.resolved_step_size * _ascent_direction(grad, config.norm)
        delta = _project(delta.detach() + step, x0, config.eps, config.norm)
    # x0 + (clamp(x0 + d) - x0) can overshoot 1 by a rounding error; the clamp removes it.
    return (x0 + delta.detach()).clamp(0.0, 1.0)


# --------------------------------------------------------------------------- input checks


def _check_labels(labels: np.ndarray, n: int, n_classes: int) -> npt.NDArray[np.int64]:
    array = np.asarray(labels)
    if array.shape != (n,) or not np.issubdtype(array.dtype, np.integer):
        raise AuditDataError(
            f"labels must be ({n},) integer class indices, one per tile, got {array.shape} "
            f"{array.dtype}; map class names to the head's output indices first"
        )
    if array.size and (array.min() < 0 or array.max() >= n_classes):
        raise AuditDataError(
            f"labels must lie in [0, {n_classes}) (the head has {n_classes} outputs), got "
            f"{array.min()}..{array.max()}"
        )
    return array.astype(np.int64)


# --------------------------------------------------------------------------- tile-level PGD


@dataclass(frozen=True, kw_only=True, eq=False)
class PGDResult:
    """What PGD did to a set of tiles.

    Attributes:
        config: the attack settings.
        n_tiles: tiles attacked.
        clean_accuracy, adversarial_accuracy: fraction of tiles classified correctly.
        success_rate: fraction of the correctly classified clean tiles whose adversarial version
            is misclassified; None when no tile was correct.
        linf_mean, linf_max: L∞ norm of the perturbations actually applied (0–1 pixel scale).
        l2_mean, l2_max: their L2 norm over all ``H * W * 3`` values.
        clean_predictions, adversarial_predictions: ``(B,)`` int64 predicted classes.
        adversarial: ``(B, H, W, 3)`` float32 adversarial tiles in [0, 1] (not quantised to
            uint8; left out of :meth:`to_dict`).
    """

    config: PGDConfig
    n_tiles: int
    clean_accuracy: float
    adversarial_accuracy: float
    success_rate: float | None
    linf_mean: float
    linf_max: float
    l2_mean: float
    l2_max: float
    clean_predictions: npt.NDArray[np.int64]
    adversarial_predictions: npt.NDArray[np.int64]
    adversarial: npt.NDArray[np.float32]

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible summary and parameters (no per-tile arrays)."""
        return {
            "norm": self.config.norm,
            "eps": self.config.eps,
            "n_tiles": self.n_tiles,
            "clean_accuracy": self.clean_accuracy,
            "adversarial_accuracy": self.adversarial_accuracy,
            "accuracy_drop": self.clean_accuracy - self.adversarial_accuracy,
            "success_rate": self.success_rate,
            "perturbation": {
                "linf_mean": self.linf_mean,
                "linf_max": self.linf_max,
                "l2_mean": self.l2_mean,
                "l2_max": self.l2_max,
            },
            "parameters": self.config.to_dict(),
        }


def pgd_attack(
    encoder: Encoder,
    head: nn.Module,
    tiles: np.ndarray,
    labels: np.ndarray,
    *,
    config: PGDConfig | None = None,
) -> PGDResult:
    """Untargeted PGD per tile: maximise the cross-entropy of the true class within the budget.

    Args:
        encoder: a differentiable torch encoder.
        head: ``(B, D)`` embeddings -> ``(B, C)`` logits (a linear probe's ``as_torch()``);
            moved to the encoder's device.
        tiles: ``(B, H, W, 3)`` uint8 RGB tiles (any size; resized as the encoder does).
        labels: ``(B,)`` int true class indices in ``[0, C)``.
        config: budget and steps (defaults: L∞, 8/255, 10 steps).

    Returns:
        Accuracies, success rate, measured perturbation norms and the adversarial tiles.

    Raises:
        AuditDataError: tiles not ``(B, H, W, 3)`` uint8, or labels not one valid class per tile.
        EncoderError: the encoder passes no usable gradient to the pixels.
    """
    config = config or PGDConfig()
    classifier, y_all = _classifier(encoder, head, tiles, labels)
    device = classifier.device
    generator = torch.Generator().manual_seed(config.seed)
    clean, adversarial, images, linf, l2 = [], [], [], [], []
    for start in range(0, len(tiles), config.batch_size):
        x0 = _to_pixels(tiles[start : start + config.batch_size], device)
        y = torch.from_numpy(y_all[start : start + config.batch_size]).to(device)

        def loss_fn(x: Tensor, y: Tensor = y) -> Tensor:
            return F.cross_entropy(classifier(x), y, reduction="none")

        x_adv = _pgd(loss_fn, x0, config, generator, encoder.info.name)
        clean.append(classifier.predict(x0).cpu())
        adversarial.append(classifier.predict(x_adv).cpu())
        images.append(_to_images(x_adv))
        # Measured on the tiles actually classified, so any float rounding is included.
        delta = (x_adv - x0).flatten(1).double()
        linf.append(delta.abs().amax(dim=1).cpu())
        l2.append(torch.linalg.vector_norm(delta, dim=1).cpu())
    clean_pred = torch.cat(clean).numpy().astype(np.int64)
    adv_pred = torch.cat(adversarial).numpy().astype(np.int64)
    linf_all, l2_all = torch.cat(linf).numpy(), torch.cat(l2).numpy()
    correct = clean_pred == y_all
    return PGDResult(
        config=config,
        n_tiles=len(tiles),
        clean_accuracy=float(correct.mean()),
        adversarial_accuracy=float((adv_pred == y_all).mean()),
        success_rate=float((adv_pred[correct] != y_all[correct]).mean()) if correct.any() else None,
        linf_mean=float(linf_all.mean()),
        linf_max=float(linf_all.max()),
        l2_mean=float(l2_all.mean()),
        l2_max=float(l2_all.max()),
        clean_predictions=clean_pred,
        adversarial_predictions=adv_pred,
        adversarial=np.concatenate(images),
    )
