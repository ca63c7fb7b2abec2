"""Instance-level MIL (Campanella et al. 2019): a slide is as positive as its top instances."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from histoguard.mil._base import MILModel, MILOutput
from histoguard.mil._layers import embedding, masked_softmax, masked_topk_mean, select_class
from histoguard.mil._registry import register_model


@register_model(
    "topk",
    description="Instance classifier; bag logit = mean of the top-k instance logits per class",
    citation=(
        "Campanella et al. 2019, Clinical-grade computational pathology using weakly "
        "supervised deep learning on whole slide images, Nature Medicine"
    ),
)
class TopKMIL(MILModel):
    """Classify every instance; each class's bag logit is the mean of its top-k instance logits.

    ``attention`` is the softmax over the real instances of the instance logits of the
    predicted class; ``extra["instance_logits"]`` is ``(B, N, C)`` and
    ``extra["class_attention"]`` ``(B, C, N)``, the same softmax for every class.
    ``embedding`` ``(B, C * hidden_dim)``: for each class, the mean hidden vector of its top-k
    instances, concatenated; the last linear layer commutes with that mean, so class c's bag
    logit is exactly the instance classifier applied to class c's slice.

    Args:
        in_dim: length D of each instance feature.
        n_classes: number of bag classes C.
        hidden_dim: hidden size of the instance classifier.
        dropout: dropout after its hidden layer.
        k: how many top instances per class make the bag logit (fewer if a bag is smaller).
    """

    def __init__(
        self,
        in_dim: int,
        n_classes: int,
        *,
        hidden_dim: int = 128,
        dropout: float = 0.1,
        k: int = 1,
    ) -> None:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        super().__init__(in_dim, n_classes, hidden_dim=hidden_dim, dropout=dropout, k=k)
        self.k = k
        self.instance_classifier = nn.Sequential(
            embedding(in_dim, hidden_dim, dropout), nn.Linear(hidden_dim, n_classes)
        )
        self.embedding_dim = n_classes * hidden_dim

    def _forward(self, features: Tensor, mask: Tensor) -> MILOutput:
        hidden = self.instance_classifier[0](features)  # (B, N, H)
        instance_logits = self.instance_classifier[1](hidden)  # (B, N, C)
        logits = masked_topk_mean(instance_logits, mask, self.k)
        class_attention = masked_softmax(instance_logits, mask).transpose(1, 2)  # (B, C, N)
        return MILOutput(
            logits=logits,
            attention=select_class(class_attention, logits.argmax(dim=1)),
            extra={"instance_logits": instance_logits, "class_attention": class_attention},
            embedding=_topk_hidden_mean(hidden, instance_logits, mask, self.k).flatten(1),
        )


def _topk_hidden_mean(hidden: Tensor, scores: Tensor, mask: Tensor, k: int) -> Tensor:
    """Per class, the mean of ``hidden (B, N, H)`` over the instances that
    :func:`masked_topk_mean` averages in ``scores (B, N, C)``: ``(B, C, H)``."""
    batch, n, width = hidden.shape
    classes = scores.shape[2]
    k_eff = min(k, n)
    top = scores.masked_fill(~mask[:, :, None], float("-inf")).topk(k_eff, dim=1).indices
    picked = torch.gather(
        hidden[:, :, None, :].expand(batch, n, classes, width),
        1,
        top[:, :, :, None].expand(batch, k_eff, classes, width),
    )  # (B, k, C, H)
    n_used = mask.sum(dim=1).clamp(max=k_eff)  # (B,)
    valid = torch.arange(k_eff, device=hidden.device)[None, :] < n_used[:, None]  # (B, k)
    total = torch.where(valid[:, :, None, None], picked, torch.zeros_like(picked)).sum(dim=1)
    return total / n_used[:, None, None].to(hidden.dtype)
