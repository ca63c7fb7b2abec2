"""Pseudo-slides of real tiles and a small seeded ABMIL model, for issue 10's real-data checks.

A pseudo-slide is a bag of real tiles. Its tiles never leave their unit: all four LC25000 tiles
of a ``source_image_group`` (augmented copies of one image) sit in one pseudo-slide, and a
colorectal pseudo-slide holds tiles of one GlaS patient or one EBHI specimen only. Train,
calibration and test slides are therefore disjoint by unit.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from histoguard.mil import MILModel, build_model
from histoguard.uncertainty import slide_embedding

#: Source-image groups per LC25000 pseudo-slide (drawn uniformly).
GROUPS_PER_SLIDE = (1, 3)
#: Tiles per colorectal pseudo-slide (drawn uniformly), within one patient / specimen.
COLON_TILES_PER_SLIDE = (4, 12)
#: Share of the LC25000 pseudo-slides (per class) used to train the slide model; the rest is
#: held out for calibration and test.
TRAIN_SHARE = 0.4
EPOCHS = 30
BATCH = 32


@dataclass(frozen=True)
class Slides:
    """Pseudo-slides as lists of tile rows.

    Attributes:
        tiles: per slide, the row indices of its tiles in the embedding table.
        labels: (S,) int64 slide class (the class of all its tiles for lung slides; for
            colorectal slides the majority tile class, unused by the checks).
        centers: (S,) the institution of each slide.
    """

    tiles: list[npt.NDArray[np.int64]]
    labels: npt.NDArray[np.int64]
    centers: npt.NDArray[np.str_]


def lung_slides(
    units: npt.NDArray[np.str_], labels: npt.NDArray[np.int64], rng: np.random.Generator
) -> Slides:
    """Bags of 1..3 whole source-image groups of one class, groups shuffled per class."""
    by_unit: dict[str, list[int]] = defaultdict(list)
    for row, unit in enumerate(units.tolist()):
        by_unit[unit].append(row)
    tiles: list[npt.NDArray[np.int64]] = []
    slide_labels: list[int] = []
    for label in np.unique(labels).tolist():
        names = sorted({u for u, rows in by_unit.items() if labels[rows[0]] == label})
        order = [names[i] for i in rng.permutation(len(names))]
        while order:
            take = int(rng.integers(GROUPS_PER_SLIDE[0], GROUPS_PER_SLIDE[1] + 1))
            chosen, order = order[:take], order[take:]
            tiles.append(np.array([r for u in chosen for r in by_unit[u]], dtype=np.int64))
            slide_labels.append(int(label))
    return Slides(
        tiles=tiles,
        labels=np.array(slide_labels, dtype=np.int64),
        centers=np.full(len(tiles), "LC25000"),
    )


def colon_slides(
    units: npt.NDArray[np.str_],
    labels: npt.NDArray[np.int64],
    centers: npt.NDArray[np.str_],
    rng: np.random.Generator,
) -> Slides:
    """Bags of 4..12 tiles of one patient / specimen (a unit with fewer tiles is one slide)."""
    by_unit: dict[str, list[int]] = defaultdict(list)
    for row, unit in enumerate(units.tolist()):
        by_unit[unit].append(row)
    tiles: list[npt.NDArray[np.int64]] = []
    for unit in sorted(by_unit):
        rows = np.array(by_unit[unit], dtype=np.int64)[rng.permutation(len(by_unit[unit]))]
        while rows.size:
            take = int(rng.integers(COLON_TILES_PER_SLIDE[0], COLON_TILES_PER_SLIDE[1] + 1))
            tiles.append(rows[:take])
            rows = rows[take:]
    return Slides(
        tiles=tiles,
        labels=np.array([np.bincount(labels[t]).argmax() for t in tiles], dtype=np.int64),
        centers=np.array([centers[t[0]] for t in tiles]),
    )


def stratified_split(
    labels: npt.NDArray[np.int64], share: float, rng: np.random.Generator
) -> npt.NDArray[np.bool_]:
    """(S,) True for a random ``share`` of the slides of each class."""
    chosen = np.zeros(labels.size, dtype=bool)
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        chosen[rng.choice(rows, round(share * rows.size), replace=False)] = True
    return chosen


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch on one thread: for a model this small, intra-op threads only add overhead
    (measured 10x slower training with 2 threads on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _padded(
    features: npt.NDArray[np.float32], bags: Sequence[npt.NDArray[np.int64]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N, D) features and (B, N) mask of the bags, padded to the longest."""
    n = max(b.size for b in bags)
    x = torch.zeros(len(bags), n, features.shape[1])
    mask = torch.zeros(len(bags), n, dtype=torch.bool)
    for i, bag in enumerate(bags):
        x[i, : bag.size] = torch.from_numpy(features[bag])
        mask[i, : bag.size] = True
    return x, mask


def train_abmil(
    features: npt.NDArray[np.float32],
    bags: Sequence[npt.NDArray[np.int64]],
    labels: npt.NDArray[np.int64],
    n_classes: int,
    seed: int,
) -> MILModel:
    """A histoguard ABMIL trained for EPOCHS epochs (AdamW, batches of BATCH bags), seeded."""
    with _one_thread():
        return _train(features, bags, labels, n_classes, seed)


def _train(
    features: npt.NDArray[np.float32],
    bags: Sequence[npt.NDArray[np.int64]],
    labels: npt.NDArray[np.int64],
    n_classes: int,
    seed: int,
) -> MILModel:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = build_model("abmil", in_dim=features.shape[1], n_classes=n_classes)
    model.fit_feature_scaling(torch.from_numpy(features[np.concatenate(list(bags))]))
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    y = torch.from_numpy(labels)
    for _ in range(EPOCHS):
        model.train()
        order = torch.randperm(len(bags), generator=generator).tolist()
        for start in range(0, len(order), BATCH):
            batch = order[start : start + BATCH]
            x, mask = _padded(features, [bags[i] for i in batch])
            loss = model.compute_loss(model(x, mask), y[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return model


def predict_slides(
    model: MILModel, features: npt.NDArray[np.float32], bags: Sequence[npt.NDArray[np.int64]]
) -> npt.NDArray[np.float64]:
    """(S, C) probabilities from the model's ``predict``, one (1, N, D) bag at a time."""
    out = []
    with _one_thread():
        for bag in bags:
            x, mask = _padded(features, [bag])
            probabilities, _ = model.predict(x, mask)
            out.append(probabilities[0].double().numpy())
    p = np.stack(out)
    result: npt.NDArray[np.float64] = p / p.sum(axis=1, keepdims=True)
    return result


def slide_embeddings(
    features: npt.NDArray[np.float32], bags: Sequence[npt.NDArray[np.int64]]
) -> npt.NDArray[np.float64]:
    """(S, 2 D) gate embeddings: ``slide_embedding`` (mean and standard deviation of the tile
    features) per slide."""
    return np.stack([slide_embedding(features[bag]) for bag in bags])
