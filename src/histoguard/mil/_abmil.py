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
        dropout: dropout after the embedding (and inside the attention unless
            ``attention_dropout`` is given).
        attention_dropout: dropout on the gated attention's hidden layer; None = ``dropout``
            (every model saved before this setting). torchmil's ABMIL has none (0.0).
    """

    def __init__(
        self,
        in_dim: int,
        n_classes: int,
        *,
        hidden_dim: int = 128,
        attention_dim: int = 64,
        dropout: float = 0.1,
        attention_dropout: float | None = None,
    ) -> None:
        # Saved configs name attention_dropout only when it is set, so older ones read the same.
        extra = {} if attention_dropout is None else {"attention_dropout": attention_dropout}
        super().__init__(
            in_dim, n_classes, hidden_dim=hidden_dim, attention_dim=attention_dim,
            dropout=dropout, **extra,
        )  # fmt: skip
        self.embed = embedding(in_dim, hidden_dim, dropout)
        gate_dropout = dropout if attention_dropout is None else attention_dropout
        self.attention = GatedAttention(hidden_dim, attention_dim, 1, gate_dropout)
        self.head = nn.Linear(hidden_dim, n_classes)
        self.embedding_dim = hidden_dim

    def _forward(self, features: Tensor, mask: Tensor) -> MILOutput:
        embeddings = self.embed(features)  # (B, N, H)
        weights = masked_softmax(self.attention(embeddings)[:, :, 0], mask)  # (B, N)
        pooled = torch.einsum("bn,bnh->bh", weights, embeddings)
        return MILOutput(logits=self.head(pooled), attention=weights, embedding=pooled)
