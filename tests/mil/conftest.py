"""Pseudo-slides built from real labelled tiles, with a known fraction of positive tiles."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from histoguard.encoders import load_encoder
from histoguard.features import write_feature_file

#: Tiles per pseudo-slide, and positive tiles in a positive one (a small, known fraction).
BAG_SIZE = 24
POSITIVES_PER_BAG = 3


@dataclass(frozen=True)
class PseudoCohort:
    """A cohort table, its feature folder, and which tiles of each bag are positive."""

    table: Path
    features: Path
    positive_tiles: dict[str, np.ndarray]  # slide_id -> (BAG_SIZE,) bool


@pytest.fixture(scope="session")
def lung_tile_features(shared_data: Path) -> dict[str, np.ndarray]:
    """Hand-crafted features of real LC25000 tiles, one tile per original image (no leakage
    between augmented copies): ``{"lung_n": (n, D), "lung_aca": (m, D)}``."""
    root = shared_data / "tiles" / "lc25000_lung"
    with (root / "labels.csv").open() as f:
        rows = list(csv.DictReader(f))
    first_of_group: dict[str, dict[str, str]] = {}
    for row in rows:
        first_of_group.setdefault(row["source_image_group"], row)
    encoder = load_encoder("hg-handcrafted")
    features = {}
    for label, count in (("lung_n", 160), ("lung_aca", 60)):
        chosen = [r for r in first_of_group.values() if r["label"] == label][:count]
        tiles = np.stack(
            [
                np.array(Image.open(root / r["path"]).convert("RGB").resize((224, 224)))
                for r in chosen
            ]
        )
        features[label] = np.concatenate(
            [encoder.encode(tiles[i : i + 32]) for i in range(0, len(tiles), 32)]
        )
    return features


def build_pseudo_cohort(
    features: dict[str, np.ndarray],
    folder: Path,
    *,
    n_bags: int = 40,
    centers: int = 2,
    seed: int = 0,
) -> PseudoCohort:
    """Half the bags positive (``POSITIVES_PER_BAG`` adenocarcinoma tiles among normal lung),
    half negative; bags alternate between ``centers`` pseudo-centers; one patient per bag."""
    rng = np.random.default_rng(seed)
    negatives, positives = features["lung_n"], features["lung_aca"]
    (folder / "features").mkdir(parents=True, exist_ok=True)
    lines = ["slide_id,label,patient_id,center"]
    positive_tiles = {}
    for i in range(n_bags):
        slide_id = f"bag{i:03d}"
        positive = i % 2 == 1
        n_pos = POSITIVES_PER_BAG if positive else 0
        rows = np.concatenate([
            negatives[rng.choice(len(negatives), BAG_SIZE - n_pos, replace=False)],
            positives[rng.choice(len(positives), n_pos, replace=False)],
        ])  # fmt: skip
        is_positive = np.arange(BAG_SIZE) >= BAG_SIZE - n_pos
        order = rng.permutation(BAG_SIZE)
        coords = np.stack([np.arange(BAG_SIZE), np.zeros(BAG_SIZE)], axis=1).astype(np.int64)
        write_feature_file(
            folder / "features" / f"{slide_id}.h5",
            rows[order].astype(np.float32),
            coords,
            {"encoder": "hg-handcrafted"},
        )
        positive_tiles[slide_id] = is_positive[order]
        lines.append(
            f"{slide_id},{'tumour' if positive else 'normal'},p{i:03d},center{i % centers}"
        )
    (folder / "cohort.csv").write_text("\n".join(lines) + "\n")
    return PseudoCohort(folder / "cohort.csv", folder / "features", positive_tiles)


@pytest.fixture
def pseudo_cohort(lung_tile_features: dict[str, np.ndarray], tmp_path: Path) -> PseudoCohort:
    """40 pseudo-slides from real tiles: 20 with 3/24 tumour tiles, 20 without, 2 centers."""
    return build_pseudo_cohort(lung_tile_features, tmp_path)
