"""Shared fixtures: where the real data lives, and skips when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from histoguard.slide import Rectangle, write_synthetic_slide

REPO_ROOT = Path(__file__).resolve().parents[1]

#: Tissue of the ``known_slide``: level-0 pixels [512, 2560) x [512, 2048).
KNOWN_TISSUE = Rectangle(x0=512, y0=512, x1=2560, y1=2048)


def shared_data_dir() -> Path:
    """The real test data folder: $HISTOGUARD_TEST_DATA, else ../shared/data from the repository."""
    env = os.environ.get("HISTOGUARD_TEST_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real-data folder; tests using it skip with a reason when it is absent."""
    root = shared_data_dir()
    if not (root / "DATA.md").is_file():
        pytest.skip(f"real test data not found at {root} (set HISTOGUARD_TEST_DATA)")
    return root


@pytest.fixture(scope="session")
def wsi_dir(shared_data: Path) -> Path:
    """The folder of real whole-slide images in the shared data."""
    return shared_data / "wsi"


@pytest.fixture(scope="session")
def known_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4096 x 3072 px at 0.25 µm/px, 3 levels (x1, x2, x4), JPEG tiles, one rectangle of tissue."""
    path = tmp_path_factory.mktemp("slides") / "known.tiff"
    return write_synthetic_slide(path, width=4096, height=3072, mpp=0.25, shapes=[KNOWN_TISSUE])


def grid_crops(image: np.ndarray, size: int) -> list[np.ndarray]:
    """Non-overlapping ``size`` x ``size`` crops of an ``(H, W, 3)`` image on a grid centred in
    it (a 775 x 522 GlaS image at 224 px: 3 x 2), row by row."""
    h, w = image.shape[:2]
    rows, cols = h // size, w // size
    top, left = (h - rows * size) // 2, (w - cols * size) // 2
    return [
        image[top + r * size : top + (r + 1) * size, left + c * size : left + (c + 1) * size]
        for r in range(rows)
        for c in range(cols)
    ]
