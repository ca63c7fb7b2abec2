"""Real two-institution tiles for the robustness tests: colorectal GlaS (UK) and EBHI-Seg (China).

The shared label space from DATA.md: malignant = GlaS ``malignant`` / EBHI ``Adenocarcinoma``;
benign = GlaS ``benign`` / EBHI ``Normal`` and ``Polyp``. Slides are GlaS patients and EBHI
specimens, so no neighbour search or split ever pairs two tiles of one patient.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from histoguard.encoders import load_encoder
from histoguard.robustness.data._containers import LabelledEmbeddings, TileDataset

#: Tiles per (class, center) cell, and their side in pixels.
TILES_PER_CELL = 80
TILE_SIZE = 224

_SHARED_LABEL = {
    "malignant": "malignant",
    "benign": "benign",
    "Adenocarcinoma": "malignant",
    "Normal": "benign",
    "Polyp": "benign",
}


def _square_tile(path: Path) -> np.ndarray:
    """The central square of an image, resized to TILE_SIZE (GlaS images are 775 x 522)."""
    with Image.open(path) as image:
        rgb = image.convert("RGB")
        side = min(rgb.size)
        left, top = (rgb.width - side) // 2, (rgb.height - side) // 2
        square = rgb.crop((left, top, left + side, top + side))
        return np.asarray(square.resize((TILE_SIZE, TILE_SIZE), Image.Resampling.BICUBIC))


@pytest.fixture(scope="session")
def colorectal_tiles(shared_data: Path) -> TileDataset:
    """Up to TILES_PER_CELL real tiles per (benign/malignant, GlaS/EBHI) cell, held in memory."""
    rng = np.random.default_rng(0)
    paths, labels, centers, slides = [], [], [], []
    for folder, center, slide_column in (
        ("glas", "GlaS", "patient"),
        ("ebhi_seg", "EBHI", "specimen"),
    ):
        root = shared_data / "tiles" / folder
        with (root / "labels.csv").open() as f:
            rows = [r for r in csv.DictReader(f) if r["label"] in _SHARED_LABEL]
        for label in ("benign", "malignant"):
            cell = [r for r in rows if _SHARED_LABEL[r["label"]] == label]
            chosen = rng.choice(len(cell), size=min(TILES_PER_CELL, len(cell)), replace=False)
            for i in sorted(chosen):
                paths.append(str(root / cell[i]["path"]))
                labels.append(label)
                centers.append(center)
                slides.append(f"{center}-{cell[i][slide_column]}")
    images = np.stack([_square_tile(Path(p)) for p in paths])
    return TileDataset(
        paths=np.array(paths),
        label=np.array(labels),
        center=np.array(centers),
        slide_id=np.array(slides),
        images=images,
    )


@pytest.fixture(scope="session")
def colorectal_embeddings(colorectal_tiles: TileDataset) -> LabelledEmbeddings:
    """``hg-handcrafted`` (38-d colour and texture statistics) embeddings of colorectal_tiles."""
    assert colorectal_tiles.images is not None
    encoder = load_encoder("hg-handcrafted")
    embeddings = np.concatenate(
        [
            encoder.encode(colorectal_tiles.images[i : i + 64])
            for i in range(0, len(colorectal_tiles), 64)
        ]
    )
    return LabelledEmbeddings(
        embeddings=embeddings,
        label=colorectal_tiles.label,
        center=colorectal_tiles.center,
        slide_id=colorectal_tiles.slide_id,
        item_id=colorectal_tiles.paths,
    )
