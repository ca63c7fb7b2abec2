"""The harmonisation steps of ``train``: the cohort check, and each split's harmoniser, fitted
on the split's training slides only, with the bags its models train on."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from histoguard.errors import ConfigError
from histoguard.harmonize import Harmonizer
from histoguard.mil._bags import Bag
from histoguard.mil._cohort import Cohort
from histoguard.mil._harmonized import add_unseen_centers, fit_split_harmonizer, harmonize_bags
from histoguard.mil._splits import Split

if TYPE_CHECKING:
    from histoguard.mil._train import TrainConfig

logger = logging.getLogger(__name__)


def check_harmonize_cohort(cohort: Cohort, config: TrainConfig) -> None:
    """Refuse ``config.harmonize`` on a cohort without two centers or with a slide lacking one.

    Raises:
        ConfigError: naming the table and the fix.
    """
    no_center = [row.slide_id for row in cohort.rows if row.center is None]
    if config.harmonize != "none" and len(cohort.centers()) < 2:
        raise ConfigError(
            f"harmonize={config.harmonize!r} removes differences between centers, and "
            f"{config.cohort} names {len(cohort.centers())}: give a center column with at "
            "least two centers, or harmonize=none"
        )
    if config.harmonize != "none" and no_center:
        raise ConfigError(
            f"{config.cohort}: slides {no_center[:5]} have no center; harmonize needs the "
            "center of every slide (fill the center column, or harmonize=none)"
        )


def split_harmonizer(
    split: Split,
    cohort: Cohort,
    bags: dict[str, Bag],
    config: TrainConfig,
    say: Callable[[str], None],
) -> tuple[Harmonizer | None, dict[str, Bag]]:
    """The split's harmoniser (None without ``config.harmonize``) and the bags its models train
    on: the split's training and validation slides harmonised, fitted on the training slides
    only; centers of its other slides it never saw are added label-free (said once)."""
    if config.harmonize == "none":
        return None, bags
    label_of = {s: cohort.label_index(cohort.row(s)) for s in split.train}  # training only
    harmonizer, warnings = fit_split_harmonizer(
        bags, split.train, label_of=label_of,
        method=config.harmonize,  # type: ignore[arg-type]
        parametric=config.harmonize_parametric, tiles_per_slide=config.harmonize_tiles,
        seed=config.seed,
    )  # fmt: skip
    others = [*split.test, *split.calibration]
    added = add_unseen_centers(
        harmonizer, bags, others, min_slides=config.harmonize_min_slides,
        tiles_per_slide=config.harmonize_tiles, seed=config.seed,
    )  # fmt: skip
    for center in added:
        n = sum(bags[s].center == center for s in others)
        warnings.append(
            f"{split.name}: center {center!r} is not among the training centers; harmonised "
            f"label-free from its {n} held-out slides (no labels read)"
        )
    for warning in warnings:
        logger.warning("%s", warning)
        say(f"warning: {warning}")
    targets = split.test if config.adversarial_unlabelled else ()  # seen by the adversary
    trained = {**bags, **harmonize_bags(harmonizer, bags, [*split.train, *split.val, *targets])}
    return harmonizer, trained
