"""The slide-level attack ("the butterfly effect" of whole-slide classifiers): perturb a tiny
fraction of a slide's tiles, the ones the MIL model attends to most, within a pixel budget, and
see whether the slide's prediction moves.

The threat model and the differentiable pipeline (pixels -> encoder preprocessing -> encoder)
are those of :mod:`histoguard.robustness.attacks._pgd`; only the chosen tiles are optimised, the
other tiles keep their clean features.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor

from histoguard.errors import AuditDataError, ConfigError
from histoguard.robustness._bag_models import distinct, models_per_bag
from histoguard.robustness.attacks._pgd import (
    PGDConfig,
    PixelEncoder,
    _pgd,
    _to_images,
    _to_pixels,
)
from histoguard.robustness.data._containers import check_tiles

if TYPE_CHECKING:
    from histoguard.encoders import Encoder
    from histoguard.mil import MILModel, MILOutput

Selection = Literal["attention", "random"]
_SELECTIONS = ("attention", "random")


@dataclass(frozen=True, kw_only=True)
class SlideAttackConfig(PGDConfig):
    """PGD on a few tiles of each slide against a MIL model (the PGD settings apply per tile;
    ``batch_size`` is the encoder batch for the clean features).

    Attributes:
        fraction: share of each slide's tiles perturbed: ``ceil(fraction * N)``, at least 1.
        selection: ``"attention"``: the tiles with the highest clean attention (gradient
            saliency when the model has no attention); ``"random"``: a seeded random choice, the
            control.
    """

    fraction: float = 0.001
    selection: Selection = "attention"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.fraction <= 1:
            raise ConfigError(f"fraction must be in (0, 1], got {self.fraction}")
        if self.selection not in _SELECTIONS:
            raise ConfigError(f"selection must be one of {_SELECTIONS}, got {self.selection!r}")

    def tiles_to_perturb(self, n_tiles: int) -> int:
        """``ceil(fraction * n_tiles)``, at least 1 (a float product such as ``0.07 * 100`` is
        read as the integer it denotes)."""
        return max(1, math.ceil(round(self.fraction * n_tiles, 9)))


@dataclass(frozen=True, kw_only=True, eq=False)
class SlideAttackRecord:
    """The attack on one slide.

    Attributes:
        n_tiles: tiles in the bag.
        perturbed: ``(k,)`` int64 indices of the perturbed tiles in the bag, most important
            first (for ``"random"``: ascending).
        selection: how they were chosen: ``"attention"``, ``"gradient"`` (the model has no
            attention) or ``"random"``.
        predicted_class: the clean slide prediction.
        clean_probability, adversarial_probability: probability of ``predicted_class`` before
            and after the attack.
        flipped: the adversarial prediction is another class.
        adversarial_tiles: ``(k, H, W, 3)`` float32 perturbed tiles in [0, 1], in the order of
            ``perturbed`` (left out of :meth:`to_dict`).
    """

    n_tiles: int
    perturbed: npt.NDArray[np.int64]
    selection: str
    predicted_class: int
    clean_probability: float
    adversarial_probability: float
    flipped: bool
    adversarial_tiles: npt.NDArray[np.float32]

    def adversarial_bag(self, bag: np.ndarray) -> npt.NDArray[np.float32]:
        """The whole attacked bag: ``(N, H, W, 3)`` uint8 clean bag -> float32 in [0, 1] with
        the perturbed tiles swapped in; every other tile is the clean one."""
        out = bag.astype(np.float32) / 255.0
        out[self.perturbed] = self.adversarial_tiles
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible record (without the tiles)."""
        return {
            "n_tiles": self.n_tiles,
            "n_perturbed": len(self.perturbed),
            "perturbed": self.perturbed.tolist(),
            "selection": self.selection,
            "predicted_class": self.predicted_class,
            "clean_probability": self.clean_probability,
            "adversarial_probability": self.adversarial_probability,
            "probability_change": self.adversarial_probability - self.clean_probability,
            "flipped": self.flipped,
        }


@dataclass(frozen=True, kw_only=True, eq=False)
class SlideAttackResult:
    """The slide-level attack on every bag.

    Attributes:
        config: the settings.
        slides: one record per bag, in input order.
    """

    config: SlideAttackConfig
    slides: tuple[SlideAttackRecord, ...]

    @property
    def flip_rate(self) -> float:
        """Fraction of slides whose predicted class changed."""
        return float(np.mean([r.flipped for r in self.slides]))

    @property
    def mean_probability_change(self) -> float:
        """Mean over slides of adversarial minus clean probability of the clean prediction
        (negative: pushed away from it)."""
        return float(
            np.mean([r.adversarial_probability - r.clean_probability for r in self.slides])
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible summary, per-slide records (``per_slide``) and parameters."""
        used = sorted({r.selection for r in self.slides})
        out: dict[str, Any] = {
            "fraction": self.config.fraction,
            "selection": self.config.selection,
            "selection_used": used,
            "eps": self.config.eps,
            "norm": self.config.norm,
            "steps": self.config.steps,
            "n_slides": len(self.slides),
            "n_flipped": sum(r.flipped for r in self.slides),
            "flip_rate": self.flip_rate,
            "mean_probability_change": self.mean_probability_change,
            "per_slide": [r.to_dict() for r in self.slides],
            "parameters": self.config.to_dict(),
        }
        if "gradient" in used:
            out["note"] = (
                "the model gives no attention scores; tiles were chosen by gradient-magnitude "
                "saliency of the slide loss with respect to each tile's features"
            )
        return out


def slide_attack(
    encoder: Encoder,
    model: MILModel | Sequence[MILModel],
    bags: Sequence[np.ndarray],
    *,
    config: SlideAttackConfig | None = None,
) -> SlideAttackResult:
    """Perturb a few tiles of each slide to push the MIL prediction away from its clean class.

    For each bag: clean features and the clean prediction; ``ceil(fraction * N)`` tiles (at
    least 1) chosen by ``config.selection``; PGD on the pixels of only those tiles, maximising
    the cross-entropy of the clean predicted class, while every other tile keeps its clean
    (precomputed) features. Each chosen tile has its own ``eps``-ball.

    Args:
        encoder: a differentiable torch encoder, the one ``model`` was trained on.
        model: a MIL model, ``(1, N, D)`` features + ``(1, N)`` mask -> logits ``(1, C)`` and
            attention ``(1, N)`` or None; moved to the encoder's device, in evaluation mode.
            Or one such model per bag (each slide attacked through the model that never saw
            it).
        bags: one ``(N_i, H, W, 3)`` uint8 array of tiles per slide.
        config: fraction, selection, budget and steps.

    Returns:
        Per-slide probabilities of the clean class before and after, flips and perturbed tiles.

    Raises:
        AuditDataError: no bags, a bag that is not ``(N, H, W, 3)`` uint8, a model whose
            feature length differs from the encoder's, or not one model per bag.
        EncoderError: the encoder passes no usable gradient to the pixels.
    """
    config = config or SlideAttackConfig()
    if len(bags) == 0:
        raise AuditDataError("no bags to attack; pass one (N, H, W, 3) tile array per slide")
    for i, bag in enumerate(bags):
        check_tiles(bag, f"bag {i}")
    models = models_per_bag(model, len(bags))
    pixel_encoder = PixelEncoder(encoder)
    for member in distinct(models):
        if member.in_dim != encoder.embed_dim:
            raise AuditDataError(
                f"the model takes {member.in_dim}-d features but encoder "
                f"{encoder.info.name!r} makes {encoder.embed_dim}-d ones; attack the model with "
                "the encoder it was trained on"
            )
        member.to(pixel_encoder.device).eval()
    generator = torch.Generator().manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    return SlideAttackResult(
        config=config,
        slides=tuple(
            _attack_slide(pixel_encoder, scorer, bag, config, generator, rng)
            for scorer, bag in zip(models, bags, strict=True)
        ),
    )


def _slide_output(model: MILModel, features: Tensor) -> MILOutput:
    """The model's output for one bag of features ``(N, D)``: logits ``(1, C)``."""
    mask = torch.ones((1, features.shape[0]), dtype=torch.bool, device=features.device)
    output: MILOutput = model(features[None], mask)
    return output


def _slide_loss(model: MILModel, features: Tensor, predicted: Tensor) -> Tensor:
    """``(1,)`` cross-entropy of the clean prediction ``(1,)`` for one bag's features."""
    return F.cross_entropy(_slide_output(model, features).logits, predicted, reduction="none")


def _attack_slide(
    pixel_encoder: PixelEncoder,
    model: MILModel,
    bag: np.ndarray,
    config: SlideAttackConfig,
    generator: torch.Generator,
    rng: np.random.Generator,
) -> SlideAttackRecord:
    features = pixel_encoder.embed(bag, config.batch_size)  # (N, D)
    with torch.no_grad():
        output = _slide_output(model, features)
    predicted = output.logits.argmax(dim=1)  # (1,)
    chosen, selection = _choose_tiles(
        model, features, output.attention, predicted, config.tiles_to_perturb(len(bag)),
        config.selection, rng,
    )  # fmt: skip
    index = torch.from_numpy(chosen).to(features.device)

    def with_tiles(pixels: Tensor) -> Tensor:
        # Only the chosen rows depend on the pixels; the rest stay the clean features.
        return features.index_copy(0, index, pixel_encoder(pixels))

    x0 = _to_pixels(bag[chosen], features.device)
    x_adv = _pgd(
        lambda x: _slide_loss(model, with_tiles(x), predicted),
        x0, config, generator, pixel_encoder.name,
    )  # fmt: skip
    with torch.no_grad():
        adversarial = _slide_output(model, with_tiles(x_adv)).logits
    clean_p = torch.softmax(output.logits, dim=1)[0, predicted]
    adv_p = torch.softmax(adversarial, dim=1)[0, predicted]
    return SlideAttackRecord(
        n_tiles=len(bag),
        perturbed=chosen,
        selection=selection,
        predicted_class=int(predicted.item()),
        clean_probability=float(clean_p.item()),
        adversarial_probability=float(adv_p.item()),
        flipped=bool(adversarial.argmax(dim=1).item() != predicted.item()),
        adversarial_tiles=_to_images(x_adv),
    )


def _choose_tiles(
    model: MILModel,
    features: Tensor,
    attention: Tensor | None,
    predicted: Tensor,
    k: int,
    selection: Selection,
    rng: np.random.Generator,
) -> tuple[npt.NDArray[np.int64], str]:
    """Indices of the ``k`` tiles to perturb (most important first) and how they were chosen."""
    if selection == "random":
        return np.sort(rng.choice(features.shape[0], size=k, replace=False)).astype(
            np.int64
        ), "random"
    if attention is not None:
        scores, how = attention[0], "attention"
    else:
        # Without attention, the tiles whose features move the slide loss most are the targets.
        leaf = features.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(_slide_loss(model, leaf, predicted).sum(), leaf)
        scores, how = grad.norm(dim=1), "gradient"
    return torch.topk(scores, k).indices.cpu().numpy().astype(np.int64), how
