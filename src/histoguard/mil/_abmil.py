"""Attention-based MIL (Ilse et al. 2018), gated variant."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from histoguard.mil._base import MILModel, MILOutput
from histoguard.mil._layers import GatedAttention, embedding, masked_softmax
from histoguard.mil._registry import register_model


@register_model(
    "abmil",
    description="Gated attention pooling of instance embeddings, linear bag classifier",
    citation="Ilse et al. 2018, Attention-based Deep Multiple Instance Learning, ICML",
)
class ABMIL(MILModel):
    """Gated-attention MIL: the bag is the attention-weighted mean of instance embeddings.

    ``embedding`` is that mean, ``(B, hidden_dim)``.

    Args:
        in_dim: length D of each instance feature.
        n_classes: number of bag classes C.
        hidden_dim: size of the instance embedding.
        attention_dim: hidden size of the gated attention.
        dropout: dropout after the embedding and inside the attention.
    """

    def __init__(
        self,
        in_dim: int,
        n_classes: int,
        *,
        hidden_dim: int = 128,
        attention_dim: int = 64,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(
            in_dim, n_classes, hidden_dim=hidden_dim, attention_dim=attention_dim, dropout=dropout
        )
        self.embed = embedding(in_dim, hidden_dim, dropout)
        self.attention = GatedAttention(hidden_dim, attention_dim, 1, dropout)
        self.head = nn.Linear(hidden_dim, n_classes)
        self.embedding_dim = hidden_dim

    def _forward(self, features: Tensor, mask: Tensor) -> MILOutput:
        embeddings = self.embed(features)  # (B, N, H)
        weights = masked_softmax(self.attention(embeddings)[:, :, 0], mask)  # (B, N)
        pooled = torch.einsum("bn,bnh->bh", weights, embeddings)
        return MILOutput(logits=self.head(pooled), attention=weights, embedding=pooled)
