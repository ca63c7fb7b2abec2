"""What the slide server serves, and the one rule for every file it opens: it lies under a
configured root once every symbolic link is resolved.

Slides are named by the server (an id per file, from its stem), so a request names an id, never
a path: a path in a request cannot reach the disk. Files found under a root whose real location
is elsewhere (a symbolic link pointing out of the root) are left out with a warning.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from histoguard.errors import ConfigError, RequestError
from histoguard.slide._inputs import find_slides

logger = logging.getLogger(__name__)

#: What a slide id may look like: it is part of every URL.
_ID_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True, kw_only=True)
class ServeConfig:
    """Settings of ``histoguard serve``.

    Attributes:
        slide_dirs: folders of slides (their files with a slide extension, not recursive).
        models_dir: a folder whose sub-folders are ``train`` outputs, named by the folder; the
            models ``POST /predict`` may run. None: no predictions on request.
        features_dir: the slides' feature files (``<slide stem>.h5``), read by ``/predict``.
        predictions_dir: what ``histoguard predict`` wrote (``predictions.json`` and the
            ``<slide>.attention.geojson`` maps), shown as overlays from the start.
        host, port: where to listen (loopback by default).
        tile_size: DeepZoom tile side in pixels (without the overlap).
        overlap: pixels each DeepZoom tile shares with its neighbours.
        jpeg_quality: quality of JPEG and WebP tiles, 1-95.
        tile_cache_mb: memory for encoded tiles, least recently used dropped first (0: off).
        max_open_slides: slides kept open at once (least recently used closed first).
        workers: threads that read and encode tiles (the bounded worker pool); also the most
            handles opened on one slide.
    """

    slide_dirs: tuple[Path, ...]
    models_dir: Path | None = None
    features_dir: Path | None = None
    predictions_dir: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    tile_size: int = 254
    overlap: int = 1
    jpeg_quality: int = 80
    tile_cache_mb: int = 256
    max_open_slides: int = 16
    workers: int = 4

    def __post_init__(self) -> None:
        if not self.slide_dirs:
            raise ConfigError("name at least one folder of slides to serve")
        checks = {
            "tile_size": 16 <= self.tile_size <= 4096,
            "overlap": 0 <= self.overlap <= 64,
            "jpeg_quality": 1 <= self.jpeg_quality <= 95,
            "tile_cache_mb": self.tile_cache_mb >= 0,
            "max_open_slides": self.max_open_slides >= 1,
            "workers": 1 <= self.workers <= 64,
            "port": 0 <= self.port <= 65535,
        }
        for name, ok in checks.items():
            if not ok:
                raise ConfigError(f"serve: {name}={getattr(self, name)!r} is out of range")


def resolve_root(path: Path, what: str) -> Path:
    """The real location of a configured folder.

    Raises:
        ConfigError: it does not exist or is not a folder.
    """
    if not path.is_dir():
        raise ConfigError(f"{path}: the {what} folder does not exist or is not a folder")
    return path.resolve(strict=True)


def inside(root: Path, candidate: Path) -> Path:
    """``candidate``'s real location, when it is an existing file or folder under ``root``.

    Args:
        root: a resolved root (see :func:`resolve_root`).
        candidate: a path, possibly through symbolic links.

    Raises:
        RequestError: 404 when it does not exist, 403 when it resolves outside ``root``.
    """
    try:
        real = candidate.resolve(strict=True)
    except (OSError, RuntimeError):  # missing, or a symbolic-link loop
        raise RequestError(404, f"{candidate.name}: no such file") from None
    if os.path.commonpath([root, real]) != str(root):
        raise RequestError(403, f"{candidate.name}: outside the served folders")
    return real


def child_name(name: str) -> str:
    """``name`` if it can be a single file or folder name under a root, else a 400.

    Raises:
        RequestError: 400 for an empty name, ``.``/``..``, a separator or a NUL byte.
    """
    if name in {"", ".", ".."} or "/" in name or "\\" in name or "\0" in name:
        raise RequestError(400, f"{name!r} is not a plain name")
    return name


def catalogue(slide_dirs: Sequence[Path]) -> dict[str, Path]:
    """The slides under the roots, by id: the file's stem, made URL-safe and unique.

    Raises:
        ConfigError: a root that is not a folder.
    """
    slides: dict[str, Path] = {}
    for root in (resolve_root(d, "slides") for d in slide_dirs):
        for path in find_slides([root]):
            try:
                real = inside(root, path)
            except RequestError as error:
                logger.warning("%s: not served (%s)", path, error.message)
                continue
            stem = _ID_UNSAFE.sub("_", path.stem).strip("._") or "slide"
            slide_id, n = stem, 1
            while slide_id in slides:
                n += 1
                slide_id = f"{stem}-{n}"
            slides[slide_id] = real
    return slides
