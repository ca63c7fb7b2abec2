"""Pseudo-slides built from real labelled tiles, with a known fraction of positive tiles.

The bags are tile-disjoint and source-disjoint: every LC25000 ``source_image_group`` (one
original image and its augmented copies) goes to at most one bag, so however the bags are split
into train, validation and test, no held-out tile, nor any augmented copy of it, was seen in
training.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from histoguard.encoders import load_encoder
from histoguard.features import write_feature_file

#: Tiles per pseudo-slide, and positive tiles in a positive one (a small, known fraction: 1/8).
BAG_SIZE = 16
POSITIVES_PER_BAG = 2
#: Bags in the cohort (half positive), and normal-lung groups per bag (4 images per group).
N_BAGS = 40
GROUP_IMAGES = 4
NORMAL_GROUPS_PER_BAG = BAG_SIZE // GROUP_IMAGES
#: Side of a pseudo-slide tile in level-0 pixels (its coords are a 4-wide grid of such tiles).
TILE_SIZE0 = 224


@dataclass(frozen=True)
class LungTiles:
    """Hand-crafted features of real LC25000 tiles, per original image.

    Attributes:
        features: label -> source_image_group -> ``(n, D)`` float32 features of its images.
        paths: label -> source_image_group -> the image paths, in the rows' order.
    """

    features: dict[str, dict[str, np.ndarray]]
    paths: dict[str, dict[str, tuple[str, ...]]]


@dataclass(frozen=True)
class PseudoCohort:
    """A cohort table, its feature folder, which tiles of each bag are positive, and where
    each bag's tiles come from (for the disjointness checks)."""

    table: Path
    features: Path
    positive_tiles: dict[str, np.ndarray]  # slide_id -> (BAG_SIZE,) bool
    tile_paths: dict[str, tuple[str, ...]]  # slide_id -> LC25000 image of each row
    tile_groups: dict[str, tuple[str, ...]]  # slide_id -> source_image_group of each row


@pytest.fixture(scope="session")
def lung_tile_features(shared_data: Path) -> LungTiles:
    """Features of the LC25000 images the pseudo-cohort needs: every image of the first
    ``N_BAGS * NORMAL_GROUPS_PER_BAG`` normal-lung groups, and one image of each of the first
    ``N_BAGS // 2 * POSITIVES_PER_BAG`` adenocarcinoma groups."""
    root = shared_data / "tiles" / "lc25000_lung"
    with (root / "labels.csv").open() as f:
        rows = list(csv.DictReader(f))
    groups: dict[str, dict[str, list[str]]] = {"lung_n": {}, "lung_aca": {}}
    for row in rows:
        if row["label"] in groups:
            groups[row["label"]].setdefault(row["source_image_group"], []).append(row["path"])
    wanted = {
        "lung_n": (N_BAGS * NORMAL_GROUPS_PER_BAG, GROUP_IMAGES),
        "lung_aca": (N_BAGS // 2 * POSITIVES_PER_BAG, 1),
    }
    encoder = load_encoder("hg-handcrafted")
    features: dict[str, dict[str, np.ndarray]] = {}
    paths: dict[str, dict[str, tuple[str, ...]]] = {}
    for label, (n_groups, per_group) in wanted.items():
        chosen = sorted(groups[label])[:n_groups]
        assert len(chosen) == n_groups, f"{label}: {len(chosen)} groups, need {n_groups}"
        paths[label] = {g: tuple(sorted(groups[label][g])[:per_group]) for g in chosen}
        flat = [p for g in chosen for p in paths[label][g]]
        tiles = np.stack(
            [np.array(Image.open(root / p).convert("RGB").resize((224, 224))) for p in flat]
        )
        encoded = np.concatenate(
            [encoder.encode(tiles[i : i + 32]) for i in range(0, len(tiles), 32)]
        )
        features[label], start = {}, 0
        for g in chosen:
            features[label][g] = encoded[start : start + len(paths[label][g])]
            start += len(paths[label][g])
    return LungTiles(features, paths)


def build_pseudo_cohort(
    tiles: LungTiles,
    folder: Path,
    *,
    n_bags: int = N_BAGS,
    centers: int = 2,
    seed: int = 0,
) -> PseudoCohort:
    """Half the bags positive (``POSITIVES_PER_BAG`` adenocarcinoma tiles among normal lung),
    half negative; bags alternate between ``centers`` pseudo-centers; one patient per bag.

    Each bag takes whole normal-lung groups and single adenocarcinoma images of its own: no
    tile and no source image group is in two bags.
    """
    rng = np.random.default_rng(seed)
    normal_groups = list(rng.permutation(sorted(tiles.features["lung_n"])))
    tumour_groups = list(rng.permutation(sorted(tiles.features["lung_aca"])))
    (folder / "features").mkdir(parents=True, exist_ok=True)
    lines = ["slide_id,label,patient_id,center"]
    positive_tiles, tile_paths, tile_groups = {}, {}, {}
    for i in range(n_bags):
        slide_id = f"bag{i:03d}"
        positive = i % 2 == 1
        n_pos = POSITIVES_PER_BAG if positive else 0
        members: list[tuple[str, str, np.ndarray]] = []  # (group, path, feature row)
        for _ in range(NORMAL_GROUPS_PER_BAG):
            group = normal_groups.pop()
            members += zip(
                [group] * GROUP_IMAGES,
                tiles.paths["lung_n"][group],
                tiles.features["lung_n"][group],
                strict=True,
            )
        members = members[: BAG_SIZE - n_pos]
        for _ in range(n_pos):
            group = tumour_groups.pop()
            members.append(
                (group, tiles.paths["lung_aca"][group][0], tiles.features["lung_aca"][group][0])
            )
        is_positive = np.arange(BAG_SIZE) >= BAG_SIZE - n_pos
        order = rng.permutation(BAG_SIZE)
        index = np.arange(BAG_SIZE)
        coords = np.stack([index % 4, index // 4], axis=1).astype(np.int64) * TILE_SIZE0
        write_feature_file(
            folder / "features" / f"{slide_id}.h5",
            np.stack([members[j][2] for j in order]).astype(np.float32),
            coords,
            {
                "encoder": "hg-handcrafted",
                "weights_sha256": "",
                "tile_size": 224,
                "patch_size_level0": TILE_SIZE0,
            },
        )
        positive_tiles[slide_id] = is_positive[order]
        tile_paths[slide_id] = tuple(members[j][1] for j in order)
        tile_groups[slide_id] = tuple(members[j][0] for j in order)
        lines.append(
            f"{slide_id},{'tumour' if positive else 'normal'},p{i:03d},center{i % centers}"
        )
    (folder / "cohort.csv").write_text("\n".join(lines) + "\n")
    return PseudoCohort(
        folder / "cohort.csv", folder / "features", positive_tiles, tile_paths, tile_groups
    )


@pytest.fixture
def pseudo_cohort(lung_tile_features: LungTiles, tmp_path: Path) -> PseudoCohort:
    """40 pseudo-slides from real tiles: 20 with 2/16 tumour tiles, 20 without, 2 centers;
    no tile or source image group shared between bags."""
    return build_pseudo_cohort(lung_tile_features, tmp_path)
