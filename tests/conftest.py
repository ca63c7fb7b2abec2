"""Shared fixtures: where the real data lives, and skips when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


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
