"""DSMIL (Li et al. 2021): dual-stream MIL with critical-instance attention."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from histoguard.mil._base import MILModel, MILOutput, weighted_cross_entropy
from histoguard.mil._layers import embedding, masked_max, masked_softmax, select_class
from histoguard.mil._registry import register_model


@register_model(
    "dsmil",
    description="Dual stream: instance classifier + attention to each class's critical instance",
    citation=(
        "Li et al. 2021, Dual-stream Multiple Instance Learning Network for Whole Slide "
        "Image Classification with Self-supervised Contrastive Learning, CVPR"
    ),
)
class DSMIL(MILModel):
    """Dual-stream MIL.

    Stream 1 classifies instances; its max over instances is the max-instance logit. Stream 2
    attends, for each class, to the instances whose queries resemble that class's critical
    (highest scoring) instance, and a 1-D convolution over the per-class bag vectors gives the
    bag logits. Loss: the mean of the bag and max-instance cross-entropies.

    ``attention`` is the predicted class's critical-instance attention; ``extra`` holds
    ``instance_logits (B, N, C)``, ``max_instance_logits (B, C)`` and
    ``class_attention (B, C, N)``. ``embedding`` is what the convolution reads: the per-class
    bag vectors concatenated, ``(B, C * hidden_dim)``.

    Args:
        in_dim: length D of each instance feature.
        n_classes: number of bag classes C.
        hidden_dim: size of the shared instance embedding.
        query_dim: size of the attention queries.
        dropout: dropout after the embedding and on the values.
    """

    aux_weight = 0.5

    def __init__(
        self,
        in_dim: int,
        n_classes: int,
        *,
        hidden_dim: int = 128,
        query_dim: int = 64,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(
            in_dim, n_classes, hidden_dim=hidden_dim, query_dim=query_dim, dropout=dropout
        )
        self.embed = embedding(in_dim, hidden_dim, dropout)
        self.instance_classifier = nn.Linear(hidden_dim, n_classes)
        self.query = nn.Sequential(
            nn.Linear(hidden_dim, query_dim), nn.ReLU(), nn.Linear(query_dim, query_dim), nn.Tanh()
        )
        self.value = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(hidden_dim, hidden_dim), nn.ReLU()
        )
        self.bag_classifier = nn.Conv1d(n_classes, n_classes, kernel_size=hidden_dim)
        self.embedding_dim = n_classes * hidden_dim

    def _forward(self, features: Tensor, mask: Tensor) -> MILOutput:
        embeddings = self.embed(features)  # (B, N, H)
        instance_logits = self.instance_classifier(embeddings)  # (B, N, C)
        critical = instance_logits.masked_fill(~mask[:, :, None], float("-inf")).argmax(dim=1)
        queries = self.query(embeddings)  # (B, N, Q)
        critical_queries = torch.gather(
            queries, 1, critical[:, :, None].expand(-1, -1, queries.shape[2])
        )  # (B, C, Q)
        scores = queries @ critical_queries.transpose(1, 2) / math.sqrt(queries.shape[2])
        weights = masked_softmax(scores, mask).transpose(1, 2)  # (B, C, N)
        bag_vectors = weights @ self.value(embeddings)  # (B, C, H)
        logits = self.bag_classifier(bag_vectors)[:, :, 0]  # (B, C)
        return MILOutput(
            logits=logits,
            attention=select_class(weights, logits.argmax(dim=1)),
            extra={
                "instance_logits": instance_logits,
                "max_instance_logits": masked_max(instance_logits, mask),
                "class_attention": weights,
            },
            embedding=bag_vectors.flatten(1),
        )

    def auxiliary_loss(
        self, output: MILOutput, labels: Tensor, *, class_weights: Tensor | None
    ) -> Tensor | None:
        return weighted_cross_entropy(output.extra["max_instance_logits"], labels, class_weights)
