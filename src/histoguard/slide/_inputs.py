"""Which slides the inputs name: files and folders expanded into slide paths, each once, and
the error that says where it looked when they name none."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

from histoguard.errors import NoSlidesError
from histoguard.slide._tile_folder import TILE_IMAGE_EXTENSIONS, is_tile_folder, tile_folders_in

logger = logging.getLogger(__name__)

#: File extensions picked up when a folder is given as input.
SLIDE_EXTENSIONS = frozenset(
    {".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".svslide", ".dcm"}
    | {".qptiff", ".png", ".jpg", ".jpeg"}
)


def find_slides(inputs: Iterable[str | Path], *, tile_folders: bool = False) -> list[Path]:
    """Expand files and folders into slide paths (folders: files with a slide extension, sorted).

    Args:
        inputs: slide files and/or folders.
        tile_folders: also take folders of tile images as slides: an input that is a tile
            folder is one slide, and each sub-folder of an input folder that is a tile folder is
            one slide (the usual layout of pre-cut tiles: one folder per slide, named for it).

    Returns:
        The slides, in input order, each once (a file given twice, or reached through two
        inputs, is kept at its first place). Paths that do not exist, and folders named like a
        slide file (``x.svs/``), are kept so the batch reports them as failed; an empty list
        means the inputs hold no slide (see :func:`require_slides`).
    """
    slides: list[Path] = []
    for item in map(Path, inputs):
        if tile_folders and is_tile_folder(item):
            slides.append(item)
        elif item.is_dir() and item.suffix.lower() not in SLIDE_EXTENSIONS:
            slides.extend(sorted(p for p in item.iterdir() if p.suffix.lower() in SLIDE_EXTENSIONS))
            if tile_folders:
                slides.extend(tile_folders_in(item))
        else:
            slides.append(item)
    return _unique(slides)


def _unique(slides: list[Path]) -> list[Path]:
    """``slides`` without repeats of one file (compared by resolved path), first place kept."""
    seen: set[Path] = set()
    unique = []
    for slide in slides:
        try:
            key = slide.resolve()
        except (OSError, RuntimeError):  # a link loop: kept, so the batch reports it
            key = slide.absolute()
        if key in seen:
            logger.warning("%s: given more than once; processed once", slide)
            continue
        seen.add(key)
        unique.append(slide)
    return unique


def require_slides(
    inputs: Sequence[str | Path], slides: Sequence[Path], *, tile_folders: bool = False
) -> None:
    """Raise when :func:`find_slides` found nothing, saying where it looked and for what.

    Raises:
        NoSlidesError: ``slides`` is empty.
    """
    if slides:
        return
    looked_for = "slide files (" + ", ".join(sorted(SLIDE_EXTENSIONS)) + ")"
    if tile_folders:
        images = ", ".join(sorted(TILE_IMAGE_EXTENSIONS))
        looked_for += f", folders of tile images ({images}) or sub-folders of them, one per slide"
        fix = "Give slide files, or a folder holding them or one tile folder per slide"
    elif any(tile_folders_in(Path(item)) or is_tile_folder(Path(item)) for item in inputs):
        fix = "These folders hold tile images, which need no tiling: run `histoguard extract`"
    else:
        fix = "Give slide files, or folders that hold them directly"
    raise NoSlidesError(inputs, looked_for, fix)
