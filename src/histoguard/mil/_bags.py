"""Feature bags: one slide's tile features in memory, fed to MIL models one bag at a time, and
the forward passes the uncertainty measures need (ensemble members, MC dropout, one-tile bags)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from histoguard.core._names import feature_file
from histoguard.errors import CohortError, ModelMismatchError, OutputError
from histoguard.features import read_feature_file
from histoguard.mil._base import MILModel
from histoguard.mil._cohort import Cohort
from histoguard.mil._harmonized import use_center


@dataclass(frozen=True)
class Bag:
    """One slide's features: ``features (N, D)`` float32, ``coords (N, 2)`` level-0 px or None,
    the feature file's attributes (provenance), and the slide's center when known (a
    harmonising model needs it; see :func:`~histoguard.mil._harmonized.use_center`)."""

    slide_id: str
    features: torch.Tensor
    coords: np.ndarray | None
    attrs: Mapping[str, Any] = field(default_factory=dict)
    center: str | None = None


def check_bag_features(
    path: Path,
    features: np.ndarray,
    in_dim: int,
    *,
    encoder: str | None = None,
    views: np.ndarray | None = None,
) -> None:
    """Refuse a slide's ``(N, D)`` features that a model on ``in_dim``-d features cannot score.

    Args:
        path: the feature file, named in the messages.
        features: its features.
        in_dim: the width D the model was trained on.
        encoder: the encoder the model was trained on, when known, named in the fix.
        views: ``(K, N, D)`` augmented views scored too (test-time augmentation), or None.

    Raises:
        OutputError: no tile (an empty bag), or NaN or infinite values (a prediction from them
            would be meaningless).
        ModelMismatchError: the features are not ``in_dim`` wide.
    """
    if features.ndim != 2 or features.shape[1] != in_dim:
        width = features.shape[1] if features.ndim == 2 else f"shape {features.shape}"
        source = f"the encoder {encoder!r}" if encoder else "the encoder the model was trained on"
        raise ModelMismatchError(
            f"{path}: {width}-dimensional features, and the model was trained on "
            f"{in_dim}-dimensional ones; extract this slide's features with {source}, or use a "
            "model trained on these features"
        )
    if len(features) == 0:
        raise OutputError(
            f"{path}: no tiles (an empty bag: the slide had no usable tile); re-extract it or "
            "leave it out"
        )
    for what, values in (("features", features), ("augmented views", views)):
        if values is None:
            continue
        bad = ~np.isfinite(values.reshape(-1, len(features), in_dim)).all(axis=(0, 2))
        if bad.any():
            raise OutputError(
                f"{path}: {int(bad.sum())} of {len(features)} tiles have NaN or infinite "
                f"{what}, and no prediction is made from them; re-extract the slide (check the "
                "encoder's weights and the tiles), or leave it out"
            )


def _listed(slides: Sequence[str]) -> str:
    return f"{', '.join(slides[:10])}{' ...' if len(slides) > 10 else ''}"


def load_bags(cohort: Cohort, features_dir: Path) -> dict[str, Bag]:
    """Read every slide's feature file once (``features_dir/<slide_id>.h5``).

    Raises:
        CohortError: feature files without a tile (empty bags), with NaN or infinite features
            (a model trained on them is NaN), or of another width than most slides' (another
            encoder), all named with the fix in one message.
        OutputError: a feature file cannot be read.
    """
    bags = {}
    empty, non_finite = [], []
    for row in cohort.rows:
        data = read_feature_file(feature_file(features_dir, row.slide_id))
        if len(data.features) == 0:
            empty.append(row.slide_id)
            continue
        if not np.isfinite(data.features).all():
            non_finite.append(row.slide_id)
            continue
        bags[row.slide_id] = Bag(
            row.slide_id,
            torch.from_numpy(data.features.copy()),
            data.coords,
            data.attrs,
            center=row.center,
        )
    widths = Counter(bag.features.shape[1] for bag in bags.values())
    usual = widths.most_common(1)[0][0] if widths else 0
    other_width = [s for s, bag in bags.items() if bag.features.shape[1] != usual]
    problems = []
    if empty:
        problems.append(f"{len(empty)} slide(s) have no tiles (empty bags): {_listed(empty)}")
    if non_finite:
        problems.append(
            f"{len(non_finite)} slide(s) have NaN or infinite features: {_listed(non_finite)}"
        )
    if other_width:
        problems.append(
            f"{len(other_width)} slide(s) have features of another width than the {usual} of "
            f"the others (another encoder): {_listed(other_width)}"
        )
    if problems:
        raise CohortError(
            f"{features_dir}: {'; '.join(problems)}; re-extract them (with one encoder) or "
            "remove them from the cohort table"
        )
    return bags


def bag_batch(
    bag: Bag, generator: torch.Generator | None, max_instances: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One bag as ``(1, N, D)`` features and a ``(1, N)`` all-True mask, optionally subsampled."""
    features = bag.features
    if generator is not None and max_instances is not None and len(features) > max_instances:
        keep = torch.randperm(len(features), generator=generator)[:max_instances]
        features = features[keep]
    return features.unsqueeze(0), torch.ones(1, len(features), dtype=torch.bool)


class BagCache:
    """Training bags standardised once into one contiguous ``(M, D)`` float32 array.

    Bag ``i`` is rows ``offsets[i]:offsets[i + 1]``; :meth:`batch` hands out views (or a
    subsample) of it for :meth:`MILModel.forward_standardized`, so a training step neither
    standardises its bag again nor copies it. The values equal ``model.standardize(bag)``
    bit for bit. Memory: one more copy of the cached bags' features (4 bytes x M x D).

    Args:
        bags: the bags to cache, in the order their indices address them.
        model: its :meth:`~MILModel.standardize` (fitted training statistics) is applied.
    """

    def __init__(self, bags: Sequence[Bag], model: MILModel) -> None:
        lengths = [len(bag.features) for bag in bags]
        self.offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        dim = model.in_dim
        self.features = torch.empty(int(self.offsets[-1]), dim, dtype=torch.float32)
        with torch.no_grad():
            for bag, start, stop in zip(bags, self.offsets[:-1], self.offsets[1:], strict=True):
                # The same two float32 operations as MILModel.standardize, written in place.
                rows = self.features[start:stop]
                torch.sub(bag.features, model.feature_mean, out=rows)
                rows.div_(model.feature_scale)
        self._ones = torch.ones(1, max(lengths, default=0), dtype=torch.bool)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def bag(self, index: int) -> torch.Tensor:
        """Bag ``index``'s standardised features ``(N, D)`` (a view)."""
        return self.features[self.offsets[index] : self.offsets[index + 1]]

    def batch(
        self, index: int, generator: torch.Generator | None, max_instances: int | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Like :func:`bag_batch` (the same draws from ``generator``): ``(1, N, D)`` standardised
        features and a ``(1, N)`` all-True mask."""
        features = self.bag(index)
        if generator is not None and max_instances is not None and len(features) > max_instances:
            keep = torch.randperm(len(features), generator=generator)[:max_instances]
            features = features[keep]
        return features.unsqueeze(0), self._ones[:, : len(features)]

    def padded(
        self, indices: Sequence[int], generator: torch.Generator | None, max_instances: int | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Several bags (each drawn as by :meth:`batch`) zero-padded into ``(B, N_max, D)``
        with their ``(B, N_max)`` mask."""
        parts = [self.batch(i, generator, max_instances)[0][0] for i in indices]
        longest = max(len(part) for part in parts)
        features = parts[0].new_zeros(len(parts), longest, parts[0].shape[1])
        mask = torch.zeros(len(parts), longest, dtype=torch.bool)
        for row, part in enumerate(parts):
            features[row, : len(part)] = part
            mask[row, : len(part)] = True
        return features, mask


def predict_bags(
    model: MILModel, bags: Sequence[Bag]
) -> tuple[np.ndarray, list[np.ndarray | None]]:
    """Class probabilities ``(S, C)`` and per-tile attention (``(N,)`` or None) for each bag."""
    probabilities, attentions = [], []
    for bag in bags:
        features, mask = bag_batch(bag, None, None)
        with use_center(model, bag.center):
            probs, attention = model.predict(features, mask)
        probabilities.append(probs[0].numpy())
        attentions.append(None if attention is None else attention[0].numpy())
    return np.stack(probabilities), attentions


def ensemble_members(model: MILModel) -> list[MILModel]:
    """The models whose disagreement measures epistemic uncertainty: a
    :class:`~histoguard.mil.FoldEnsemble`'s members, else the model itself."""
    members = getattr(model, "members", None)
    return [m for m in members if isinstance(m, MILModel)] if members is not None else [model]


def _dropout_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in model.modules() if isinstance(m, torch.nn.Dropout) and m.p > 0]


def member_probabilities(
    model: MILModel,
    features: torch.Tensor,
    mask: torch.Tensor,
    *,
    mc_dropout: int = 0,
    seed: int = 0,
) -> torch.Tensor:
    """Each ensemble member's class probabilities, and MC-dropout passes of each.

    Args:
        model: one model or a fold ensemble.
        features: ``(B, N, D)`` padded bags; mask ``(B, N)`` True for real tiles.
        mc_dropout: extra stochastic passes per member with dropout active (0: none); members
            without dropout layers contribute their one deterministic pass.
        seed: seeds the dropout masks.

    Returns:
        ``(M, B, C)`` probabilities, M = members x (1 + mc_dropout) for members with dropout.
    """
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    outputs = []
    try:
        with torch.no_grad():
            for member in ensemble_members(model):
                member.eval()
                outputs.append(torch.softmax(member(features, mask).logits, dim=1))
                dropouts = _dropout_modules(member)
                if not mc_dropout or not dropouts:
                    continue
                for module in dropouts:
                    module.train()
                try:
                    for _ in range(mc_dropout):
                        outputs.append(torch.softmax(member(features, mask).logits, dim=1))
                finally:
                    member.eval()
    finally:
        torch.random.set_rng_state(generator_state)
    return torch.stack(outputs)


def tile_probabilities(model: MILModel, bag: Bag, *, chunk: int = 4096) -> np.ndarray:
    """Each member's probabilities for every tile seen alone (a one-tile bag).

    Returns:
        ``(M, N, C)`` float32, M = ensemble members.
    """
    features = bag.features
    parts = []
    for start in range(0, len(features), chunk):
        block = features[start : start + chunk].unsqueeze(1)  # (n, 1, D): n one-tile bags
        mask = torch.ones(block.shape[0], 1, dtype=torch.bool)
        with use_center(model, bag.center):
            parts.append(member_probabilities(model, block, mask))
    return torch.cat(parts, dim=1).numpy()


def bag_output(model: MILModel, bag: Bag) -> tuple[np.ndarray, np.ndarray | None]:
    """One bag through the model, in eval mode without gradients: ``(C,)`` float64 logits (a
    fold ensemble's are the log of its members' mean probability) and ``(N,)`` attention, or
    None for models without attention."""
    model.eval()
    features, mask = bag_batch(bag, None, None)
    with torch.no_grad(), use_center(model, bag.center):
        output = model(features, mask)
    attention = None if output.attention is None else output.attention[0].numpy()
    return output.logits[0].double().numpy(), attention


def bag_logits(model: MILModel, bags: Sequence[Bag]) -> np.ndarray:
    """``(S, C)`` float64 logits of each bag (see :func:`bag_output`)."""
    return np.stack([bag_output(model, bag)[0] for bag in bags])
