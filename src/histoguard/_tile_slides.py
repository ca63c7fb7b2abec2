"""``histoguard.tile_slide`` / ``histoguard.tile_slides``: tiling with the overview PNG drawn.

``histoguard.slide`` tiles but never draws (drawing lives in ``histoguard.report``, downstream of
it); these thin wrappers pass report's renderer, so the top-level calls write
``<stem>.thumbnail.png`` as documented in the README.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from histoguard.core._batch import BatchReport, ProgressCallback, SlideResult
from histoguard.report._tiling_overview import render_tiling_overview
from histoguard.slide import _tile_job
from histoguard.slide._tile_job import TilingConfig


def tile_slide(
    slide: str | Path,
    out_dir: str | Path,
    config: TilingConfig | None = None,
    *,
    on_progress: ProgressCallback | None = None,
) -> SlideResult:
    """:func:`histoguard.slide.tile_slide`, also writing ``<stem>.thumbnail.png``.

    The PNG shows the tissue outline and the kept tiles over the slide thumbnail. Raises as
    :func:`histoguard.slide.tile_slide`.
    """
    return _tile_job.tile_slide(
        slide, out_dir, config, on_progress=on_progress, overview=render_tiling_overview
    )


def tile_slides(
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    config: TilingConfig | None = None,
    *,
    progress: bool = False,
) -> BatchReport:
    """:func:`histoguard.slide.tile_slides`, also writing each slide's ``<stem>.thumbnail.png``.

    Raises:
        NoSlidesError: the inputs hold no slide.
    """
    return _tile_job.tile_slides(
        inputs, out_dir, config, progress=progress, overview=render_tiling_overview
    )
