"""Real LC25000 lung embeddings for the uncertainty tests, computed once per session."""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

CLASSES = ("lung_n", "lung_aca", "lung_scc")


@dataclass(frozen=True)
class LungSplits:
    """hg-cnn embeddings of LC25000 lung tiles in three group-disjoint splits."""

    x: dict[str, npt.NDArray[np.float32]]
    y: dict[str, npt.NDArray[np.int64]]
    groups: dict[str, set[str]]


@pytest.fixture(scope="session")
def lung_splits(shared_data: Path) -> LungSplits:
    """Train / calibration / test split by ``source_image_group`` (never by tile): per class
    40 / 30 / 30 groups, 1 / 2 / 2 tiles per group (the tiles of a group are augmentations of one
    image), embedded with the weightless ``hg-cnn`` encoder."""
    from histoguard.core._image import decode_image
    from histoguard.encoders import load_encoder

    root = shared_data / "tiles" / "lc25000_lung"
    by_group: dict[str, list[dict[str, str]]] = defaultdict(list)
    with (root / "labels.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            by_group[row["source_image_group"]].append(row)
    rng = np.random.default_rng(0)
    sizes = {"train": 40, "calib": 30, "test": 30}
    per_group = {"train": 1, "calib": 2, "test": 2}
    picked: dict[str, list[dict[str, str]]] = {name: [] for name in sizes}
    groups: dict[str, set[str]] = {name: set() for name in sizes}
    for label in CLASSES:
        names = sorted(g for g, rows in by_group.items() if rows[0]["label"] == label)
        order = rng.permutation(len(names))
        start = 0
        for split, size in sizes.items():
            for i in order[start : start + size]:
                groups[split].add(names[i])
                picked[split].extend(
                    sorted(by_group[names[i]], key=lambda r: r["path"])[: per_group[split]]
                )
            start += size
    encoder = load_encoder("hg-cnn")
    x: dict[str, npt.NDArray[np.float32]] = {}
    y: dict[str, npt.NDArray[np.int64]] = {}
    for split, rows in picked.items():
        images = np.stack([decode_image(root / r["path"]) for r in rows])
        x[split] = np.asarray(encoder.encode(images), dtype=np.float32)
        y[split] = np.array([CLASSES.index(r["label"]) for r in rows], dtype=np.int64)
    return LungSplits(x=x, y=y, groups=groups)
