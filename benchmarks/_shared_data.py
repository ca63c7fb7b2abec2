"""Where the benchmarks find the real shared data: $HISTOGUARD_TEST_DATA, else ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

SHARED_DATA = Path(
    os.environ.get("HISTOGUARD_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)

#: The real TCGA slide (JPEG2000, two levels, no mpp in its metadata).
TCGA_SLIDE = SHARED_DATA / "wsi" / "tcga-cr-7395-01a-01-ts1.svs"
