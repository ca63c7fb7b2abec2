"""The pixel parts of the audit: stress tests and attacks of the linear probe on held-out tiles,
and of a slide model (one fold, or the ensemble of all folds) on held-out slides.

The probe is trained on one set of slides and everything here is measured on the others, so
every accuracy is out of sample. Progress goes to ``logging.getLogger(__name__)``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from histoguard.errors import AuditDataError, EncoderError
from histoguard.robustness.attacks._pgd import PGDConfig, UniversalConfig, pgd_attack
from histoguard.robustness.attacks._slide_attack import SlideAttackConfig, slide_attack
from histoguard.robustness.attacks._universal import universal_attack
from histoguard.robustness.data._containers import TileDataset
from histoguard.robustness.data._embed import embed_tiles
from histoguard.robustness.metrics._linear_probe import LinearProbe, fit_linear_probe
from histoguard.robustness.shifts._stress import stress_slide_model, stress_test

if TYPE_CHECKING:
    from histoguard.encoders import Encoder
    from histoguard.mil import MILModel
    from histoguard.robustness._audit import AuditConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Bags:
    """The test slides as bags of tiles for a slide model: ``slides`` (M,), ``tiles`` (M arrays
    of ``(N_i, S, S, 3)`` uint8), ``labels`` (M,) each slide's majority tile label."""

    slides: list[str]
    tiles: list[np.ndarray]
    labels: np.ndarray


@dataclass(frozen=True)
class SlideModelUnderTest:
    """A slide model with its class names (output order), its held-out test bags, and the
    ``models`` record written next to its results (which folders, how combined, which slides
    each scored). ``model`` is one model, or one per bag (the model that never saw it)."""

    model: MILModel | Sequence[MILModel]
    labels: Sequence[str]
    bags: Bags
    models: Mapping[str, Any]


def stratified_sample(labels: np.ndarray, rows: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """At most ``limit`` of ``rows``, as equal per class as the data allow, sorted."""
    if len(rows) <= limit:
        return rows
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(rows)
    # Rank of each row within its class; taking the lowest ranks first interleaves the classes,
    # so a small class is kept whole before a large one fills the rest.
    rank = np.empty(len(shuffled), dtype=np.int64)
    for label in np.unique(labels[shuffled]):
        members = labels[shuffled] == label
        rank[members] = np.arange(int(members.sum()))
    return np.sort(shuffled[np.argsort(rank, kind="stable")[:limit]])


def held_out_bags(
    tiles: TileDataset, test: np.ndarray, encoder: Encoder, config: AuditConfig
) -> Bags:
    """Each test slide's tiles (at most ``config.max_tiles_per_bag``, seeded) at the encoder's
    input size."""
    rng = np.random.default_rng(config.seed)
    slides = sorted(set(tiles.slide_id[test].tolist()))
    bags, labels = [], []
    for slide in slides:
        rows = test[tiles.slide_id[test] == slide]
        if len(rows) > config.max_tiles_per_bag:
            rows = np.sort(rng.choice(rows, size=config.max_tiles_per_bag, replace=False))
        bags.append(tiles.load_for(encoder.info, rows))
        values, counts = np.unique(tiles.label[rows], return_counts=True)
        labels.append(values[np.argmax(counts)])
    return Bags(slides=slides, tiles=bags, labels=np.array(labels))


def stress(
    encoder: Encoder,
    tiles: TileDataset,
    probe: LinearProbe,
    test: np.ndarray,
    config: AuditConfig,
    slide_model: SlideModelUnderTest | None,
) -> dict[str, Any]:
    """The probe's stress test on held-out tiles, and the slide model's on held-out slides."""
    rows = stratified_sample(tiles.label, test, config.max_stress_tiles, config.seed)
    logger.info("stress tests: %d tiles", len(rows))
    images = tiles.load_for(encoder.info, rows)
    result = stress_test(encoder, images, tiles.label[rows], probe.predict, config=config.stress)
    out = result.to_dict()
    if slide_model is not None:
        bags = slide_model.bags
        logger.info("stress tests of the slide model: %d slides", len(bags.slides))
        try:
            out["slide_model"] = {
                **stress_slide_model(
                    encoder, slide_model.model, bags.tiles, bags.labels, slide_model.labels,
                    config=config.stress,
                ).to_dict(),
                **slide_model.models,
            }  # fmt: skip
        except AuditDataError as error:
            out["slide_model"] = {"skipped": str(error), **slide_model.models}
    return out


def adversarial(
    encoder: Encoder,
    tiles: TileDataset,
    probe: LinearProbe,
    train: np.ndarray,
    test: np.ndarray,
    config: AuditConfig,
    slide_model: SlideModelUnderTest | None,
) -> dict[str, Any]:
    """PGD and the universal perturbation against the probe on held-out tiles, and the
    slide-level attack against the slide model on held-out slides."""
    settings = config.attacks
    rows = stratified_sample(tiles.label, test, settings.max_tiles, config.seed)
    images = tiles.load_for(encoder.info, rows)
    class_index = {c: i for i, c in enumerate(probe.classes)}
    labels = np.array([class_index[c] for c in tiles.label[rows]], dtype=np.int64)
    head = probe.as_torch()
    out: dict[str, Any] = {}
    try:
        out["pgd"] = []
        for norm in settings.pgd_norms:
            for eps in settings.pgd_eps:
                budget = eps if norm == "linf" else eps * float(np.sqrt(images[0].size))
                logger.info("PGD %s eps=%.4f: %d tiles", norm, budget, len(rows))
                pgd = PGDConfig(norm=norm, eps=budget, steps=settings.pgd_steps, seed=config.seed)
                out["pgd"].append(pgd_attack(encoder, head, images, labels, config=pgd).to_dict())
        out["universal"] = _universal(encoder, tiles, probe, train, images, labels, config)
        if slide_model is not None:
            out["slide"] = _slide_attack(encoder, slide_model, config)
    except EncoderError as error:
        return {"skipped": f"encoder {encoder.info.name!r} cannot be attacked: {error}", **out}
    return out


def _universal(
    encoder: Encoder,
    tiles: TileDataset,
    probe: LinearProbe,
    train: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    config: AuditConfig,
) -> dict[str, Any]:
    """A universal perturbation learned on probe-training tiles, applied to the unseen test
    tiles, and transferred to the configured other encoders (each with its own probe)."""
    from histoguard.encoders import load_encoder

    settings = config.attacks
    rows = stratified_sample(tiles.label, train, settings.max_tiles, config.seed)
    train_images = tiles.load_for(encoder.info, rows)
    class_index = {c: i for i, c in enumerate(probe.classes)}
    train_labels = np.array([class_index[c] for c in tiles.label[rows]], dtype=np.int64)
    targets = {}
    for name in settings.transfer_encoders:
        other = load_encoder(name)
        emb = embed_tiles(other, tiles.subset(rows), batch_size=config.batch_size)
        other_probe = fit_linear_probe(
            emb.embeddings, emb.label, groups=emb.slide_id, seed=config.seed
        )
        targets[name] = (other, other_probe.as_torch())
    logger.info(
        "universal perturbation: learned on %d tiles, tested on %d", len(rows), len(test_labels)
    )
    universal = UniversalConfig(eps=settings.universal_eps, seed=config.seed)
    return universal_attack(
        source=(encoder, probe.as_torch()),
        targets=targets,
        train_tiles=train_images,
        train_labels=train_labels,
        test_tiles=test_images,
        test_labels=test_labels,
        config=universal,
    ).to_dict()


def _slide_attack(
    encoder: Encoder, slide_model: SlideModelUnderTest, config: AuditConfig
) -> dict[str, Any]:
    bags = slide_model.bags
    logger.info("slide-level attack: %d slides", len(bags.slides))
    attack = SlideAttackConfig(
        fraction=config.attacks.slide_fraction, eps=config.attacks.slide_eps, seed=config.seed
    )
    try:
        result = slide_attack(encoder, slide_model.model, bags.tiles, config=attack).to_dict()
    except AuditDataError as error:
        return {"skipped": str(error), **slide_model.models}
    return {**result, "slides": bags.slides, **slide_model.models}
