"""A slide model that harmonises its input first: the fitted ComBat / CovBat of its training
centers, applied per slide center inside the forward pass (with gradients), and saved with it.

The center of the slide being scored is ambient state, set with :func:`use_center` by the code
that knows which slide it feeds (``predict_bags``, ``bag_output``, ``predict``); a harmonised
model asked to score features without a center refuses rather than guess one.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from histoguard.errors import ConfigError, UnknownCenterError
from histoguard.harmonize import (
    FIT_TILES_PER_SLIDE,
    HARMONIZER_DIR,
    Harmonizer,
    Method,
    design_from_labels,
    load_harmonizer,
    save_harmonizer,
    tile_sample,
)
from histoguard.mil._base import MILModel, MILOutput

if TYPE_CHECKING:
    from histoguard.mil._bags import Bag


class HarmonizedModel(MILModel):
    """``member`` applied to features harmonised for the current slide's center.

    For center ``c`` the input ``x (B, N, D)`` becomes ``x @ matrix_c + offset_c``
    (:meth:`Harmonizer.affine`; diagonal for ComBat), then goes to ``member`` unchanged.

    Args:
        member: the model trained on harmonised features.
        harmonizer: the fitted harmoniser of its training centers.
    """

    def __init__(self, member: MILModel, harmonizer: Harmonizer) -> None:
        super().__init__(member.in_dim, member.n_classes)
        if harmonizer.state is None or harmonizer.state.grand_mean.size != member.in_dim:
            raise ConfigError(
                f"the harmoniser must be fitted on {member.in_dim}-d features, like the model"
            )
        self.member = member
        self.harmonizer = harmonizer
        self.center: str | None = None
        self._maps: dict[str, tuple[Tensor, Tensor]] = {}
        self.refresh()

    def refresh(self) -> None:
        """Re-read the per-center maps (after centers were added to :attr:`harmonizer`)."""
        self._maps = {}
        for name in self.harmonizer.centers:
            matrix, offset = self.harmonizer.affine(name)
            self._maps[name] = (torch.from_numpy(matrix).float(), torch.from_numpy(offset).float())

    @property
    def centers(self) -> tuple[str, ...]:
        """The centers this model can score (training, then label-free ones)."""
        return self.harmonizer.centers

    def add_unseen_centers(
        self, bags: Mapping[str, Bag], slide_ids: Sequence[str], *, min_slides: int, seed: int = 0
    ) -> list[str]:
        """Harmonise, label-free, the centers of ``slide_ids`` this model never saw (see
        :func:`add_unseen_centers`); returns those added."""
        added = add_unseen_centers(
            self.harmonizer,
            bags,
            slide_ids,
            min_slides=min_slides,
            tiles_per_slide=FIT_TILES_PER_SLIDE,
            seed=seed,
        )
        self.refresh()
        return added

    def harmonize(self, features: Tensor, center: str) -> Tensor:
        """``features (..., D)`` harmonised for ``center``, same shape, float32.

        Raises:
            UnknownCenterError: ``center`` is not one this model can score.
        """
        if center not in self._maps:
            raise UnknownCenterError(center, self.centers)
        matrix, offset = (t.to(features.device) for t in self._maps[center])
        if self.harmonizer.method == "combat":
            return features * torch.diagonal(matrix) + offset
        return features @ matrix + offset

    def _forward(self, features: Tensor, mask: Tensor) -> MILOutput:
        if self.center is None:
            raise ConfigError(
                "this model harmonises its input by center, and no center was given for the "
                "slide: pass the slides' centers (predict --centers TABLE, or a cohort column)"
            )
        output: MILOutput = self.member(self.harmonize(features, self.center), mask)
        return output

    def config(self) -> dict[str, Any]:
        """The member's config (the harmoniser is saved beside it, in ``harmonizer/``)."""
        return self.member.config()


def harmonized_members(model: torch.nn.Module) -> list[HarmonizedModel]:
    """Every :class:`HarmonizedModel` in ``model`` (itself, or members of an ensemble)."""
    return [m for m in model.modules() if isinstance(m, HarmonizedModel)]


@contextmanager
def use_center(model: torch.nn.Module, center: str | None) -> Iterator[None]:
    """Score the next bags as slides of ``center`` (no effect on models that do not
    harmonise)."""
    members = harmonized_members(model)
    before = [m.center for m in members]
    for m in members:
        m.center = center or None
    try:
        yield
    finally:
        for m, previous in zip(members, before, strict=True):
            m.center = previous


def save_harmonized(model: MILModel, directory: Path) -> None:
    """Save a :class:`HarmonizedModel`'s harmoniser in ``directory/harmonizer`` (its member is
    saved by :func:`~histoguard.mil._checkpoint.save_model`); nothing for other models."""
    if isinstance(model, HarmonizedModel):
        save_harmonizer(model.harmonizer, directory / HARMONIZER_DIR)


def with_saved_harmonizer(model: MILModel, directory: Path) -> MILModel:
    """``model`` wrapped in a :class:`HarmonizedModel` when ``directory`` holds a harmoniser."""
    if not (directory / HARMONIZER_DIR).is_dir():
        return model
    return HarmonizedModel(model, load_harmonizer(directory / HARMONIZER_DIR))


def _center(bags: Mapping[str, Bag], slide_id: str) -> str:
    """The center of ``slide_id``'s bag.

    Raises:
        ConfigError: the bag has none.
    """
    center = bags[slide_id].center
    if center is None:
        raise ConfigError(f"slide {slide_id!r} has no center; harmonisation needs one per slide")
    return center


def _tile_sample(
    bags: Mapping[str, Bag], slide_ids: Sequence[str], tiles_per_slide: int, seed: int
) -> tuple[np.ndarray, list[str]]:
    """At most ``tiles_per_slide`` seeded tiles of each slide: ``(n, D)`` and their slides."""
    rng = np.random.default_rng(seed)
    parts, owners = [], []
    for s in slide_ids:
        parts.append(tile_sample(bags[s].features.numpy(), tiles_per_slide, rng))
        owners.extend([s] * len(parts[-1]))
    return np.concatenate(parts), owners


def fit_split_harmonizer(
    bags: Mapping[str, Bag],
    train_ids: Sequence[str],
    *,
    label_of: Mapping[str, int],
    method: Method,
    parametric: bool,
    tiles_per_slide: int,
    seed: int,
) -> tuple[Harmonizer, list[str]]:
    """A harmoniser fitted on the training slides' tiles (their bags' centers), the slide
    label as the covariate to keep; returns it and warnings.

    Only ``train_ids`` are read: their features (at most ``tiles_per_slide`` per slide), their
    centers and their labels. When the labels are confounded with the centers (a center
    with one class only), the fit is made without covariates and a warning says what that
    costs.
    """
    features, owners = _tile_sample(bags, train_ids, tiles_per_slide, seed)
    centers = [_center(bags, s) for s in owners]
    design = design_from_labels([label_of[s] for s in owners])
    harmonizer = Harmonizer(method=method, parametric=parametric)
    try:
        return harmonizer.fit(features, centers, design), []
    except ConfigError as error:
        if "confounded" not in str(error):
            raise
    warning = (
        "the training labels are confounded with the centers (a center holds one class), so "
        "the harmoniser was fitted without the label as a covariate: class differences "
        "between centers are removed with the center effect"
    )
    return harmonizer.fit(features, centers), [warning]


def add_unseen_centers(
    harmonizer: Harmonizer,
    bags: Mapping[str, Bag],
    slide_ids: Sequence[str],
    *,
    min_slides: int,
    tiles_per_slide: int,
    seed: int,
) -> list[str]:
    """Harmonise, label-free, every center of ``slide_ids``' bags the harmoniser does not
    know, from those slides' own features (no label is read); returns the centers added.

    Raises:
        TooFewSlidesError: an unseen center with fewer than ``min_slides`` slides.
        ConfigError: a bag without a center.
    """
    center_of = {s: _center(bags, s) for s in slide_ids}
    unseen = sorted(set(center_of.values()) - set(harmonizer.centers))
    for center in unseen:
        own = [s for s in slide_ids if center_of[s] == center]
        features, owners = _tile_sample(bags, own, tiles_per_slide, seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the caller reports label-free fits
            harmonizer.fit_new_center(features, center, slides=owners, min_slides=min_slides)
    return unseen


def harmonize_bags(
    harmonizer: Harmonizer, bags: Mapping[str, Bag], slide_ids: Sequence[str]
) -> dict[str, Bag]:
    """The bags of ``slide_ids`` with their features harmonised for their own centers."""
    out = {}
    for s in slide_ids:
        bag = bags[s]
        values = harmonizer.transform(bag.features.numpy(), [_center(bags, s)] * len(bag.features))
        out[s] = dataclasses.replace(bag, features=torch.from_numpy(values.astype(np.float32)))
    return out
