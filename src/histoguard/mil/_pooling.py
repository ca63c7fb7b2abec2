"""Baselines: a linear head on the masked mean or max of a per-instance MLP embedding."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from histoguard.mil._base import MILModel, MILOutput
from histoguard.mil._layers import embedding, masked_max, masked_mean
from histoguard.mil._registry import register_model


class _PoolingMIL(MILModel):
    """Embed each instance, pool over the real instances, classify the pooled vector
    (``embedding``, ``(B, hidden_dim)``).

    Args:
        in_dim: length D of each instance feature.
        n_classes: number of bag classes C.
        hidden_dim: size of the instance embedding.
        dropout: dropout after the embedding.
    """

    _pool: Callable[[Tensor, Tensor], Tensor]

    def __init__(
        self, in_dim: int, n_classes: int, *, hidden_dim: int = 128, dropout: float = 0.1
    ) -> None:
        super().__init__(in_dim, n_classes, hidden_dim=hidden_dim, dropout=dropout)
        self.embed = embedding(in_dim, hidden_dim, dropout)
        self.head = nn.Linear(hidden_dim, n_classes)
        self.embedding_dim = hidden_dim

    def _forward(self, features: Tensor, mask: Tensor) -> MILOutput:
        pooled = type(self)._pool(self.embed(features), mask)  # (B, H)
        return MILOutput(logits=self.head(pooled), embedding=pooled)


@register_model(
    "mean-pool",
    description="Linear head on the mean of instance embeddings (baseline)",
    citation="Ilse et al. 2018, Attention-based Deep Multiple Instance Learning (mean baseline)",
)
class MeanPoolMIL(_PoolingMIL):
    """Mean-pooling baseline; ``features: (B, N, D)``, ``mask: (B, N)`` -> logits ``(B, C)``."""

    _pool = staticmethod(masked_mean)


@register_model(
    "max-pool",
    description="Linear head on the element-wise max of instance embeddings (baseline)",
    citation="Ilse et al. 2018, Attention-based Deep Multiple Instance Learning (max baseline)",
)
class MaxPoolMIL(_PoolingMIL):
    """Max-pooling baseline; ``features: (B, N, D)``, ``mask: (B, N)`` -> logits ``(B, C)``."""

    _pool = staticmethod(masked_max)
