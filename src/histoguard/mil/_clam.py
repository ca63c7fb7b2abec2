"""CLAM (Lu et al. 2021): gated attention MIL with an instance-level clustering loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from histoguard.mil._base import MILModel, MILOutput
from histoguard.mil._layers import GatedAttention, embedding, masked_softmax, select_class
from histoguard.mil._registry import register_model

_CITATION = (
    "Lu et al. 2021, Data-efficient and weakly supervised computational pathology on "
    "whole-slide images, Nature Biomedical Engineering"
)


class _CLAM(MILModel):
    """Shared CLAM body; subclasses choose one attention branch or one per class.

    Instance clustering loss: for each bag and its true class c, the ``k_sample`` most and
    least attended real instances (by the attention branch used for class c) are labelled
    1 and 0 for a per-class instance classifier, trained with cross-entropy (CLAM's default
    is a smooth top-1 SVM). With ``subtyping``, the most attended instances of the other
    classes' branches are also labelled 0 ("out of the class"), as in CLAM. Bags with fewer
    than ``2 * k_sample`` real instances use ``n_real // 2`` of each.

    ``extra``: ``instance_embeddings (B, N, H)``, ``branch_attention (B, K, N)`` and ``mask``.
    ``embedding``: the attention-pooled bag vector of each branch, concatenated, ``(B, K * H)``
    (K = 1 for CLAM-SB, C for CLAM-MB, whose class c head reads branch c's slice).

    Args:
        in_dim: length D of each instance feature.
        n_classes: number of bag classes C.
        hidden_dim: size of the instance embedding.
        attention_dim: hidden size of the gated attention.
        dropout: dropout after the embedding and inside the attention.
        k_sample: instances per bag taken from each end of the attention ranking.
        instance_loss_weight: weight of the clustering loss (CLAM: 1 - bag_weight = 0.3).
        subtyping: add the out-of-class term (CLAM's ``--subtyping``, for subtyping tasks).
    """

    _multi_branch: bool

    def __init__(
        self,
        in_dim: int,
        n_classes: int,
        *,
        hidden_dim: int = 128,
        attention_dim: int = 64,
        dropout: float = 0.1,
        k_sample: int = 8,
        instance_loss_weight: float = 0.3,
        subtyping: bool = False,
    ) -> None:
        if k_sample < 1 or not 0.0 <= instance_loss_weight <= 1.0:
            raise ValueError("need k_sample >= 1 and 0 <= instance_loss_weight <= 1")
        super().__init__(
            in_dim,
            n_classes,
            hidden_dim=hidden_dim,
            attention_dim=attention_dim,
            dropout=dropout,
            k_sample=k_sample,
            instance_loss_weight=instance_loss_weight,
            subtyping=subtyping,
        )
        self.k_sample = k_sample
        self.subtyping = subtyping
        self.aux_weight = instance_loss_weight
        n_branches = n_classes if self._multi_branch else 1
        self.embedding_dim = n_branches * hidden_dim
        self.embed = embedding(in_dim, hidden_dim, dropout)
        self.attention = GatedAttention(hidden_dim, attention_dim, n_branches, dropout)
        # CLAM-MB scores class c from the bag vector of branch c with its own linear layer.
        self.bag_classifiers = nn.ModuleList(
            nn.Linear(hidden_dim, 1 if self._multi_branch else n_classes) for _ in range(n_branches)
        )
        self.instance_classifiers = nn.ModuleList(
            nn.Linear(hidden_dim, 2) for _ in range(n_classes)
        )

    def _forward(self, features: Tensor, mask: Tensor) -> MILOutput:
        embeddings = self.embed(features)  # (B, N, H)
        weights = masked_softmax(self.attention(embeddings), mask).transpose(1, 2)  # (B, K, N)
        pooled = torch.einsum("bkn,bnh->bkh", weights, embeddings)
        logits = torch.cat(
            [head(pooled[:, k]) for k, head in enumerate(self.bag_classifiers)], dim=1
        )  # (B, C)
        if self._multi_branch:
            attention = select_class(weights, logits.argmax(dim=1))
        else:
            attention = weights[:, 0]
        return MILOutput(
            logits=logits,
            attention=attention,
            extra={"instance_embeddings": embeddings, "branch_attention": weights, "mask": mask},
            embedding=pooled.flatten(1),
        )

    def auxiliary_loss(
        self, output: MILOutput, labels: Tensor, *, class_weights: Tensor | None
    ) -> Tensor | None:
        embeddings = output.extra["instance_embeddings"]
        branch_attention = output.extra["branch_attention"]
        mask = output.extra["mask"]
        terms: list[Tensor] = []
        for b in range(labels.shape[0]):
            real = mask[b].nonzero().squeeze(1)
            k = min(self.k_sample, real.numel() // 2)
            if k == 0:
                continue
            for c, classifier in enumerate(self.instance_classifiers):
                if c != int(labels[b]) and not self.subtyping:
                    continue
                scores = branch_attention[b, c if self._multi_branch else 0, real]
                order = real[scores.argsort(descending=True)]
                if c == int(labels[b]):
                    chosen = torch.cat([order[:k], order[-k:]])
                    targets = torch.cat([labels.new_ones(k), labels.new_zeros(k)])
                else:
                    chosen, targets = order[:k], labels.new_zeros(k)
                terms.append(F.cross_entropy(classifier(embeddings[b, chosen]), targets))
        return torch.stack(terms).mean() if terms else None


@register_model(
    "clam-sb",
    description="CLAM single branch: gated attention + instance clustering loss",
    citation=_CITATION,
)
class CLAMSingleBranch(_CLAM):
    """CLAM-SB: one attention branch shared by all classes (see :class:`_CLAM`)."""

    _multi_branch = False


@register_model(
    "clam-mb",
    description="CLAM multi branch: one gated attention branch per class + clustering loss",
    citation=_CITATION,
)
class CLAMMultiBranch(_CLAM):
    """CLAM-MB: one attention branch and bag classifier per class; ``attention`` is the
    predicted class's branch (see :class:`_CLAM`)."""

    _multi_branch = True
