"""Training-time robustness: losses on the bag embedding that fight the hospital signal.

Two options of :class:`~histoguard.mil.TrainConfig`, both off by default (and then training is
exactly the plain run):

- ``adversarial_weight`` (λ_max > 0): a center-adversarial head (Ganin & Lempitsky 2015,
  DANN). A small MLP predicts each training slide's center from the bag embedding
  (:attr:`~histoguard.mil.MILOutput.embedding`) behind a gradient-reversal layer: the head
  learns to tell the centers apart while the MIL model receives the reversed gradient, scaled
  by λ(p) = λ_max · (2 / (1 + exp(-10 p)) - 1) with p the training progress in [0, 1], and so
  learns embeddings the head cannot read the center from. The head exists only during
  training; saved models never contain it.
- ``contrastive_weight`` (> 0): a supervised-contrastive loss (Khosla et al. 2020) over the
  ``bags_per_step`` bag embeddings of a step, with ScanGen-style center-aware positives: an
  anchor's positives are the bags of its class from *another* center; when the step holds
  none, the bags of its class. Pulling same-class bags of different hospitals together pushes
  the hospital out of the embedding.

With ``adversarial_unlabelled`` the adversary also sees each split's held-out **test** slides,
as unlabelled bags of their own centers: unsupervised domain adaptation as DANN meant it, the
target domain joining the center loss. Every step draws one test bag per training bag (uniformly,
with replacement, from the split's generator), so each step shows the adversary both domains
even with ``bags_per_step = 1``; the test bags enter the center cross-entropy only, never the
classification or contrastive loss, and their labels are never read (nothing here looks one up).
This is transductive: the held-out slides' features shape the model, as label-free
harmonisation of a new center does; calibration slides are never used.

A split whose adversary would see fewer than two centers (training slides, plus test slides with
``adversarial_unlabelled``) trains without it (with a warning); :func:`check_adversarial_centers`
refuses a run in which no split has two.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from histoguard.encoders._training_steps import center_aware_contrastive_loss
from histoguard.errors import ConfigError
from histoguard.mil._base import MILModel, MILOutput
from histoguard.mil._cohort import Cohort
from histoguard.mil._splits import Split

logger = logging.getLogger(__name__)

#: Hidden width of the center-adversarial MLP.
ADVERSARY_HIDDEN = 64
#: The adversary's learning rate as a multiple of the model's.
ADVERSARY_LR_FACTOR = 10.0


class _GradientReversal(torch.autograd.Function):
    """Identity forward; the backward pass multiplies the gradient by ``-scale``."""

    @staticmethod
    def forward(ctx: Any, inputs: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return inputs.view_as(inputs)

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> tuple[Tensor, None]:
        return -ctx.scale * grads[0], None


def reverse_gradient(inputs: Tensor, scale: float) -> Tensor:
    """``inputs`` unchanged, but gradients flowing back through it are multiplied by
    ``-scale`` (the gradient-reversal layer of Ganin & Lempitsky 2015); any shape."""
    out: Tensor = _GradientReversal.apply(inputs, scale)
    return out


def dann_lambda(progress: float, lambda_max: float) -> float:
    """The DANN schedule λ(p) = λ_max · (2 / (1 + exp(-10 p)) - 1): 0 at the start of training
    (p = 0), rising to about λ_max (0.99991 · λ_max at p = 1), so the reversed gradient only
    bites once the classifier has learnt something.

    Raises:
        ValueError: ``progress`` outside [0, 1] or a negative ``lambda_max``.
    """
    if not 0.0 <= progress <= 1.0 or lambda_max < 0:
        raise ValueError(
            f"need 0 <= progress <= 1 and lambda_max >= 0, got {progress}, {lambda_max}"
        )
    return lambda_max * (2.0 / (1.0 + math.exp(-10.0 * progress)) - 1.0)


class CenterAdversary(nn.Module):
    """Predicts the center from a bag embedding, behind a gradient-reversal layer.

    Args:
        embedding_dim: length E of the bag embedding.
        n_centers: number of training centers (>= 2).
        hidden_dim: width of the MLP's hidden layer.
    """

    def __init__(self, embedding_dim: int, n_centers: int, hidden_dim: int = ADVERSARY_HIDDEN):
        super().__init__()
        if embedding_dim < 1 or n_centers < 2:
            raise ValueError(
                f"need embedding_dim >= 1 and n_centers >= 2, got {embedding_dim}, {n_centers}"
            )
        self.net = nn.Sequential(
            nn.Linear(embedding_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, n_centers)
        )

    def forward(self, embedding: Tensor, scale: float) -> Tensor:
        """Center logits ``(B, n_centers)`` from ``embedding: (B, E)``; the gradient reaching
        ``embedding`` is reversed and multiplied by ``scale`` (λ)."""
        logits: Tensor = self.net(reverse_gradient(embedding, scale))
        return logits


def supervised_contrastive_loss(
    embeddings: Tensor, labels: Tensor, centers: Tensor, *, temperature: float
) -> Tensor | None:
    """The bag-level loss: the shared
    :func:`~histoguard.encoders._training_steps.center_aware_contrastive_loss` with a
    ScanGen-style fallback: an anchor's positives are the other bags with its label and a
    known, different center; if there are none, the other bags with its label.

    Args:
        embeddings: ``(S, E)`` bag embeddings.
        labels: ``(S,)`` int64 classes.
        centers: ``(S,)`` int64 center indices, -1 = unknown (never "another center").
        temperature: τ > 0.

    Returns:
        A scalar, or None when no anchor has a positive (e.g. one bag per class).
    """
    return center_aware_contrastive_loss(
        embeddings, labels, centers, temperature=temperature, same_class_fallback=True
    )


def adversary_centers(split: Split, cohort: Cohort, *, unlabelled: bool = False) -> list[str]:
    """The centers the adversary of ``split`` tells apart, sorted: those of its training slides,
    and with ``unlabelled`` those of its test slides too (rows without a center skipped)."""
    center_of = {row.slide_id: row.center for row in cohort.rows}
    slides = (*split.train, *split.test) if unlabelled else split.train
    return sorted({c for s in slides if (c := center_of.get(s)) is not None})


def target_slides(split: Split, cohort: Cohort) -> tuple[str, ...]:
    """``split``'s test slides that have a center: the unlabelled target bags of
    ``adversarial_unlabelled`` (only their centers and features are used)."""
    center_of = {row.slide_id: row.center for row in cohort.rows}
    return tuple(s for s in split.test if center_of.get(s) is not None)


def check_adversarial_centers(
    splits: Sequence[Split], cohort: Cohort, adversarial_weight: float, *, unlabelled: bool = False
) -> None:
    """With ``adversarial_weight > 0``, refuse a run in which no split's adversary would see
    two centers (its training slides' centers, plus its test slides' with ``unlabelled``).

    Raises:
        ConfigError: no split has two (for example leave-one-center-out on a two-center
            cohort without ``unlabelled``, or no ``center`` column).
    """
    if adversarial_weight <= 0 or not splits:
        return
    if any(len(adversary_centers(s, cohort, unlabelled=unlabelled)) >= 2 for s in splits):
        return
    slides = "training or test slides" if unlabelled else "training slides"
    hint = "" if unlabelled else ", set adversarial_unlabelled (test slides join, label-free)"
    raise ConfigError(
        f"adversarial_weight={adversarial_weight} needs {slides} from at least 2 centers "
        f"in some split, but no split has them (cohort centers: {list(cohort.centers()) or 'none'})"
        "; fill the cohort's center column, choose a split design that trains on several "
        f"centers{hint}, or set adversarial_weight to 0"
    )


class RobustObjective:
    """The robustness terms of one split's training, and the adversary's running accuracy.

    Args:
        model: the MIL model being trained (its ``embedding_dim`` sizes the adversary).
        split: the split; its training slides' centers (and with ``unlabelled`` its test
            slides') are the adversary's classes.
        cohort: the cohort (labels of the training slides only, and centers).
        adversarial_weight: λ_max; 0 = no adversary.
        contrastive_weight: weight of :func:`supervised_contrastive_loss`; 0 = none.
        temperature: τ of the contrastive loss.
        unlabelled: the split's test slides join the adversary as unlabelled target bags
            (:meth:`draw_targets`); their labels are never read.
    """

    def __init__(
        self,
        model: MILModel,
        split: Split,
        cohort: Cohort,
        *,
        adversarial_weight: float,
        contrastive_weight: float,
        temperature: float,
        unlabelled: bool = False,
    ) -> None:
        centers = adversary_centers(split, cohort, unlabelled=unlabelled)
        index = {c: i for i, c in enumerate(centers)}
        self._center_of = {
            row.slide_id: index.get(row.center, -1) if row.center is not None else -1
            for row in cohort.rows
        }
        train = set(split.train)  # only training slides' labels are looked up
        self._label_of = {
            r.slide_id: cohort.label_index(r) for r in cohort.rows if r.slide_id in train
        }
        self.lambda_max = adversarial_weight
        self.contrastive_weight = contrastive_weight
        self.temperature = temperature
        self.adversary: CenterAdversary | None = None
        if adversarial_weight > 0:
            if len(centers) >= 2:
                self.adversary = CenterAdversary(model.embedding_dim, len(centers))
            else:
                logger.warning(
                    "%s: adversarial_weight=%s needs %s slides from >= 2 centers, this "
                    "split has %s; it trains without the center adversary",
                    split.name, adversarial_weight, "training or test" if unlabelled else
                    "training", centers or "none",
                )  # fmt: skip
        with_targets = unlabelled and self.adversary is not None
        self.target_ids = target_slides(split, cohort) if with_targets else ()
        self._correct = self._seen = 0
        self._last_lambda = 0.0
        self._majority = self._majority_share(split.train, len(centers))

    def _majority_share(self, train: Sequence[str], n_centers: int) -> float:
        """The adversary's accuracy from always naming the most frequent center of its stream:
        the training bags, and as many uniformly drawn target bags when there are targets."""
        if n_centers == 0:
            return 0.0
        shares = torch.zeros(n_centers, dtype=torch.float64)
        for slides in (train, self.target_ids):
            known = [c for s in slides if (c := self._center_of[s]) >= 0]
            if known:
                shares += torch.bincount(torch.tensor(known), minlength=n_centers) / len(known)
        return float(shares.max() / shares.sum()) if float(shares.sum()) > 0 else 0.0

    @property
    def active(self) -> bool:
        """Whether any robustness term is added to the loss."""
        return self.adversary is not None or self.contrastive_weight > 0

    def parameter_groups(self, lr: float) -> list[dict[str, Any]]:
        """Optimiser parameter groups for the adversary (none without one): it learns
        ``ADVERSARY_LR_FACTOR`` times faster than the model, so it keeps up with the
        embedding it chases instead of trailing it (which lets the model flip the center's
        sign each epoch rather than remove it)."""
        if self.adversary is None:
            return []
        return [{"params": list(self.adversary.parameters()), "lr": lr * ADVERSARY_LR_FACTOR}]

    def draw_targets(self, n: int, generator: torch.Generator) -> list[str]:
        """``n`` unlabelled target slides for one step, drawn uniformly with replacement with
        ``generator``; empty (and ``generator`` untouched) without targets."""
        if not self.target_ids:
            return []
        picks = torch.randint(len(self.target_ids), (n,), generator=generator).tolist()
        return [self.target_ids[i] for i in picks]

    def loss(
        self,
        slide_ids: Sequence[str],
        outputs: Sequence[MILOutput],
        progress: float,
        *,
        targets: Sequence[str] = (),
        target_outputs: Sequence[MILOutput] = (),
    ) -> Tensor | None:
        """The robustness terms of one step: the adversary's center cross-entropy over the
        training and target bags (its reversed gradient scaled by λ(progress)) plus
        ``contrastive_weight`` × the supervised-contrastive loss of the training bags, or
        None when neither applies to this step.

        Args:
            slide_ids: the step's training slides, in the order of ``outputs``.
            outputs: the model's outputs for them, one bag each.
            progress: training progress p in [0, 1] (for the λ schedule).
            targets: the step's unlabelled target slides (:meth:`draw_targets`).
            target_outputs: the model's outputs for them; used by the adversary only.

        Raises:
            ValueError: a model output has no embedding.
        """
        every = [*outputs, *target_outputs]
        if any(o.embedding is None for o in every):
            raise ValueError("robust training needs MILOutput.embedding from the model")
        embeddings = torch.cat([o.embedding for o in every if o.embedding is not None])
        centers = torch.tensor([self._center_of[s] for s in (*slide_ids, *targets)])
        terms: list[Tensor] = []
        if self.adversary is not None and bool((centers >= 0).any()):
            known = centers >= 0
            self._last_lambda = dann_lambda(progress, self.lambda_max)
            center_logits = self.adversary(embeddings[known], self._last_lambda)
            terms.append(F.cross_entropy(center_logits, centers[known]))
            self._correct += int((center_logits.argmax(dim=1) == centers[known]).sum())
            self._seen += int(known.sum())
        n = len(slide_ids)  # the contrastive loss sees the labelled training bags only
        if self.contrastive_weight > 0 and n > 1:
            labels = torch.tensor([self._label_of[s] for s in slide_ids])
            contrastive = supervised_contrastive_loss(
                embeddings[:n], labels, centers[:n], temperature=self.temperature
            )
            if contrastive is not None:
                terms.append(self.contrastive_weight * contrastive)
        if not terms:
            return None
        return terms[0] if len(terms) == 1 else torch.stack(terms).sum()

    def end_epoch(self, name: str, epoch: int, epochs: int) -> float | None:
        """Log (INFO) and return the adversary's center accuracy on this epoch's bags (training
        and target), then reset it; None without an adversary. Accuracy near the majority share
        means the center is no longer readable from the embeddings."""
        if self.adversary is None or self._seen == 0:
            return None
        accuracy = self._correct / self._seen
        stream = f", with {len(self.target_ids)} unlabelled test slides" if self.target_ids else ""
        logger.info(
            "%s epoch %d/%d: center adversary accuracy %.3f (majority center %.3f, lambda %.3f%s)",
            name, epoch + 1, epochs, accuracy, self._majority, self._last_lambda, stream,
        )  # fmt: skip
        self._correct = self._seen = 0
        return accuracy
