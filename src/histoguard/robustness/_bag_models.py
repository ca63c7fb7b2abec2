"""One slide model per bag: the stress test and the slide-level attack score each held-out
slide with the model that never saw it (for a k-fold ``train`` output, the fold whose test part
holds the slide), so a model given as a sequence is aligned with the bags."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from histoguard.errors import AuditDataError

if TYPE_CHECKING:
    from histoguard.mil import MILModel


def models_per_bag(model: MILModel | Sequence[MILModel], n_bags: int) -> list[MILModel]:
    """``model`` for every bag, or the sequence of models aligned with the bags.

    Raises:
        AuditDataError: a sequence whose length is not ``n_bags``.
    """
    import torch

    if isinstance(model, torch.nn.Module):
        return [model] * n_bags
    models = list(model)
    if len(models) != n_bags:
        raise AuditDataError(f"{len(models)} slide models for {n_bags} bags; give one per bag")
    return models


def distinct(models: Sequence[MILModel]) -> list[MILModel]:
    """Each model once, in first-seen order (for once-per-model checks and device moves)."""
    seen: dict[int, MILModel] = {}
    for model in models:
        seen.setdefault(id(model), model)
    return list(seen.values())
