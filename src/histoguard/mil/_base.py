"""The contract every MIL model keeps: padded bags in, bag logits and instance attention out.

A batch holds ``B`` bags padded to a common length ``N``; ``mask`` marks the real instances.
Padded positions never influence logits or attention, so a bag's output does not depend on how
much padding its batch needed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class MILOutput:
    """What a MIL model's forward pass returns.

    Attributes:
        logits: ``(B, C)`` bag logits.
        attention: ``(B, N)`` float32 per-instance scores, summing to 1 over the real instances
            of each bag and exactly 0 on padding; None for models without instance scores.
        extra: model-specific tensors that :meth:`MILModel.compute_loss` needs (instance
            logits, per-class attention, instance embeddings).
        embedding: ``(B, E)`` the bag representation the bag classifier reads, with
            ``E = model.embedding_dim`` (for multi-branch models the per-class bag vectors,
            concatenated class by class: ``E = C * H``); like the logits it does not depend on
            padding. Training-time robustness losses act on it. None where a model has none
            (a :class:`~histoguard.mil.FoldEnsemble`: its members' spaces differ).
    """

    logits: Tensor
    attention: Tensor | None = None
    extra: dict[str, Tensor] = field(default_factory=dict)
    embedding: Tensor | None = None


def class_balanced_weights(labels: Tensor, n_classes: int) -> Tensor:
    """``(C,)`` float32 inverse-frequency weights of ``labels (S,)`` int64 for
    :meth:`MILModel.compute_loss`: ``S / (C * count_c)``, a missing class counted once."""
    counts = torch.bincount(labels, minlength=n_classes).float()
    return counts.sum() / (len(counts) * counts.clamp(min=1))


def weighted_cross_entropy(
    logits: Tensor, labels: Tensor, class_weights: Tensor | None = None
) -> Tensor:
    """Mean over the ``B`` bags of ``w[y_i] * CE_i``: each bag's cross-entropy scaled by its
    class's weight, **not** normalised by the batch's weight sum.

    ``F.cross_entropy(..., weight=w)`` divides by ``Σ w[y_i]``, which for the one bag of a
    batch-1 step cancels the weight exactly: class weighting would do nothing. With weights that
    average 1 over the training bags (:func:`class_balanced_weights`), this mean is the
    class-balanced risk whatever the batch size.

    Args:
        logits: ``(B, C)``.
        labels: ``(B,)`` int64 in ``[0, C)``.
        class_weights: ``(C,)`` float, or None for the plain mean.
    """
    per_bag = F.cross_entropy(logits, labels, reduction="none")
    if class_weights is not None:
        per_bag = per_bag * class_weights.to(per_bag.dtype)[labels]
    return per_bag.mean()


def check_bags(features: Tensor, mask: Tensor, in_dim: int) -> None:
    """Validate a padded batch: ``features: (B, N, D)`` float, ``mask: (B, N)`` bool.

    Raises:
        ValueError: wrong shapes or dtypes, or a bag without any real instance (its attention
            and pooled features would be undefined).
    """
    if features.ndim != 3 or features.shape[2] != in_dim:
        raise ValueError(f"features must be (B, N, {in_dim}), got {tuple(features.shape)}")
    if mask.dtype != torch.bool or mask.shape != features.shape[:2]:
        raise ValueError(
            f"mask must be a bool tensor of shape {tuple(features.shape[:2])}, "
            f"got {mask.dtype} {tuple(mask.shape)}"
        )
    if not bool(mask.any(dim=1).all()):
        raise ValueError("every bag needs at least one real instance (mask all False)")


class MILModel(torch.nn.Module, ABC):
    """Base of all MIL models: ``forward``, ``compute_loss``, ``predict`` and ``config``.

    Subclasses pass their hyperparameters to ``__init__`` as keywords so that :meth:`config`
    can rebuild them, implement :meth:`_forward`, and add auxiliary loss terms by overriding
    :meth:`auxiliary_loss` (mixed with the bag loss by ``aux_weight``).

    Args:
        in_dim: length D of each instance feature.
        n_classes: number of bag classes C.
        **hparams: the subclass's JSON-serialisable constructor arguments.
    """

    #: Registry name, set by :func:`~histoguard.mil.register_model`.
    registry_name: ClassVar[str] = ""
    #: Weight of :meth:`auxiliary_loss` in :meth:`compute_loss`; 0 for models without one.
    aux_weight: float = 0.0
    #: Length E of :attr:`MILOutput.embedding`; set by each model's ``__init__``.
    embedding_dim: int = 0
    feature_mean: Tensor
    feature_scale: Tensor

    def __init__(self, in_dim: int, n_classes: int, **hparams: Any) -> None:
        super().__init__()
        if in_dim < 1 or n_classes < 2:
            raise ValueError(f"need in_dim >= 1 and n_classes >= 2, got {in_dim}, {n_classes}")
        self.in_dim = in_dim
        self.n_classes = n_classes
        self._hparams = dict(hparams)
        # Per-feature standardisation fitted on the training bags (identity until then); kept as
        # buffers so checkpoints carry it and every prediction uses the training statistics.
        self.register_buffer("feature_mean", torch.zeros(in_dim))
        self.register_buffer("feature_scale", torch.ones(in_dim))

    def fit_feature_scaling(self, features: Tensor) -> None:
        """Standardise inputs with the mean and standard deviation of ``features (M, D)``
        (all training instances); encoders' feature scales vary by orders of magnitude."""
        self.feature_mean.copy_(features.mean(dim=0))
        self.feature_scale.copy_(features.std(dim=0).clamp(min=1e-6))

    def standardize(self, features: Tensor) -> Tensor:
        """``(features - feature_mean) / feature_scale`` for features ``(..., D)``: what
        :meth:`forward` applies first. A training cache applies it once per bag
        (:meth:`forward_standardized`) instead of at every step; the values are identical."""
        return (features - self.feature_mean) / self.feature_scale

    def forward(self, features: Tensor, mask: Tensor) -> MILOutput:
        """Score a padded batch of bags.

        Args:
            features: ``(B, N, D)`` float32 instance features.
            mask: ``(B, N)`` bool, True = real instance.

        Raises:
            ValueError: see :func:`check_bags`.
        """
        check_bags(features, mask, self.in_dim)
        return self._forward_masked(self.standardize(features), mask)

    def forward_standardized(self, features: Tensor, mask: Tensor) -> MILOutput:
        """:meth:`forward` for features already passed through :meth:`standardize` (shapes as
        in :meth:`forward`); the training loop's bag cache standardises each bag once.

        Raises:
            ValueError: see :func:`check_bags`.
        """
        check_bags(features, mask, self.in_dim)
        return self._forward_masked(features, mask)

    def _forward_masked(self, features: Tensor, mask: Tensor) -> MILOutput:
        # Padding is zeroed once here so that even NaN padding cannot reach a product with a
        # 0 weight; a batch without padding (every single bag) skips the pass over its input.
        if not bool(mask.all()):
            features = torch.where(mask[:, :, None], features, torch.zeros_like(features))
        return self._forward(features, mask)

    @abstractmethod
    def _forward(self, features: Tensor, mask: Tensor) -> MILOutput:
        """The model itself, on a validated batch with zeroed padding (shapes as in
        :meth:`forward`)."""

    def auxiliary_loss(
        self, output: MILOutput, labels: Tensor, *, class_weights: Tensor | None
    ) -> Tensor | None:
        """A model-specific loss term on ``output`` (``labels: (B,)`` int64), or None."""
        return None

    def compute_loss(
        self, output: MILOutput, labels: Tensor, *, class_weights: Tensor | None = None
    ) -> Tensor:
        """Training loss: ``(1 - aux_weight) * bag CE + aux_weight * auxiliary loss``.

        Args:
            output: this model's forward output for the batch.
            labels: ``(B,)`` int64 bag labels in ``[0, C)``.
            class_weights: ``(C,)`` float weights for the cross-entropy terms, or None (see
                :func:`weighted_cross_entropy`: each bag's term is scaled by its class weight,
                so the weights act at any batch size, batch 1 included).

        Returns:
            A scalar tensor.
        """
        bag_loss = weighted_cross_entropy(output.logits, labels, class_weights)
        aux = self.auxiliary_loss(output, labels, class_weights=class_weights)
        if aux is None:
            return bag_loss
        return (1.0 - self.aux_weight) * bag_loss + self.aux_weight * aux

    def predict(self, features: Tensor, mask: Tensor) -> tuple[Tensor, Tensor | None]:
        """Class probabilities ``(B, C)`` and attention ``(B, N)`` (or None), in eval mode.

        The module is left in evaluation mode; gradients are not tracked.
        """
        self.eval()
        with torch.no_grad():
            output = self(features, mask)
        return torch.softmax(output.logits, dim=1), output.attention

    def config(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments: ``build_model(**model.config())`` rebuilds it.

        Raises:
            TypeError: the class was never registered, so no name can rebuild it.
        """
        if not type(self).registry_name:
            raise TypeError(f"{type(self).__name__} is not registered with @register_model")
        return {
            "name": type(self).registry_name,
            "in_dim": self.in_dim,
            "n_classes": self.n_classes,
            **self._hparams,
        }
