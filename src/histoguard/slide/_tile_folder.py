"""A folder of tile images read as one "slide" (datasets shipped as tiles, e.g. LC25000, GlaS).

What counts as a tile folder (:func:`is_tile_folder`): a directory whose own files (not its
subfolders; hidden files ignored) include at least one tile image (:data:`TILE_IMAGE_EXTENSIONS`)
and no whole-slide file, where every tile image is at most :data:`MAX_TILE_SIDE` pixels on each
side and no TIFF is tiled or multi-page. A folder of large images or of pyramidal TIFFs is a
folder of slides instead; a folder of folders is not one slide: each of its sub-folders that is
a tile folder is one slide (:func:`tile_folders_in`), named after the sub-folder.

Tiles have no position on a slide: their "coordinates" are ``(index, 0)`` in name order, which
keeps the ``(N, 2)`` coords contract of tile and feature files; the names say which tile is which.
"""

from __future__ import annotations

import struct
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from histoguard.core._image import ResizePolicy, decode_image, resize_tile_images
from histoguard.errors import ImageError, SlideNotFoundError, UnsupportedFormatError

TILE_IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff"})

#: A tile image larger than this on either side makes its folder a folder of slides.
MAX_TILE_SIDE = 4096

# Extensions that only whole-slide images use; one of these in a folder makes it a slide folder.
_WHOLE_SLIDE_EXTENSIONS = frozenset(
    {".svs", ".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".vmu", ".svslide", ".dcm", ".qptiff"}
)
_TIFF_TILE_WIDTH_TAG = 322
_DEFAULT_RESIZE = ResizePolicy()

# What Pillow raises for files it cannot decode, across its format plugins.
_DECODE_ERRORS = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    struct.error,
    Image.DecompressionBombError,
)


@dataclass(frozen=True)
class TileFolder:
    """The tile images directly inside a folder, in name order.

    Only the folder's own files are tiles (subfolders are not searched), so a dataset laid out
    as one subfolder per class or per slide is never merged into one bag. Hidden files (such as
    macOS ``._name.png`` resource forks) are ignored.

    Attributes:
        path: the folder.
        names: file names relative to ``path``, sorted by code point (platform-independent).
    """

    path: Path
    names: tuple[str, ...]

    @classmethod
    def open(cls, path: Path) -> TileFolder:
        """List the tile images of ``path``.

        Raises:
            SlideNotFoundError: nothing exists at ``path``.
            UnsupportedFormatError: ``path`` is not a folder, or holds no tile images.
        """
        path = Path(path)
        if not path.exists():
            raise SlideNotFoundError(path, "no such folder")
        if not path.is_dir():
            raise UnsupportedFormatError(path, "not a folder of tile images")
        names = tuple(p.name for p in _tile_images(path))
        if not names:
            raise UnsupportedFormatError(
                path,
                f"no tile images in {path}",
                f"Put the tiles ({', '.join(sorted(TILE_IMAGE_EXTENSIONS))}) directly in it",
            )
        return cls(path=path, names=names)

    def __len__(self) -> int:
        return len(self.names)

    def coords(self) -> np.ndarray:
        """``(N, 2)`` int64 ``(index, 0)``: tiles have no slide position, only an order."""
        coords = np.zeros((len(self.names), 2), dtype=np.int64)
        coords[:, 0] = np.arange(len(self.names))
        return coords

    def read(
        self,
        indices: Sequence[int],
        size: int | None = None,
        *,
        resize: ResizePolicy = _DEFAULT_RESIZE,
    ) -> tuple[np.ndarray, list[tuple[int, str]]]:
        """Decode tiles ``indices`` as RGB.

        Args:
            indices: positions in :attr:`names` (repeats allowed).
            size: output side in pixels; tiles of another size are resized to ``size`` x ``size``
                by ``resize`` (pass the encoder's ``info.resize`` and ``info.input_size`` so that
                tiles are resized once, as the encoder would). None keeps the decoded size, which
                must then be the same for all.
            resize: how tiles are resized (interpolation, and centre-crop, stretch or refuse for
                non-square tiles); a refused tile is reported as a failure.

        Returns:
            ``(B', H, W, 3)`` uint8 tiles that decoded, in request order (``H = W = size`` when
            given; ``(0, 0, 0, 3)`` when none decoded and ``size`` is None), and
            ``(index, message)`` for each tile that did not - failures are never zero-filled.
            Transparent pixels are composited onto white, like slide background.

        Raises:
            IndexError: an index is outside ``0 .. len(self) - 1``.
            ValueError: ``size`` is not positive, or ``size`` is None and tiles differ in size.
        """
        if size is not None and size < 1:
            raise ValueError(f"size must be a positive number of pixels, got {size}")
        tiles: list[np.ndarray] = []
        failures: list[tuple[int, str]] = []
        for index in indices:
            if not 0 <= index < len(self.names):
                raise IndexError(f"{self.path}: tile index {index} outside 0..{len(self) - 1}")
            path = self.path / self.names[index]
            try:
                tile = decode_image(path)
                if size is not None:
                    tile = resize_tile_images(tile, size, resize, what=str(path))
            except ImageError as error:
                failures.append((index, str(error)))
                continue
            tiles.append(tile)
        if size is None and len({tile.shape for tile in tiles}) > 1:
            shapes = sorted({f"{t.shape[1]}x{t.shape[0]}" for t in tiles})
            raise ValueError(
                f"{self.path}: tiles differ in size ({', '.join(shapes)}); pass size= to resize"
            )
        if not tiles:
            side = size or 0
            return np.zeros((0, side, side, 3), dtype=np.uint8), failures
        return np.stack(tiles), failures


def is_tile_folder(path: Path) -> bool:
    """Whether ``path`` is a folder of tile images to be read as one slide (see module docs).

    Reads only image headers; stops at the first file that rules the folder out.
    """
    path = Path(path)
    # A MIRAX slide's data folder is named like the slide and holds no images anyway.
    if not path.is_dir() or path.suffix.lower() == ".mrxs":
        return False
    children = [p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")]
    if any(p.suffix.lower() in _WHOLE_SLIDE_EXTENSIONS for p in children):
        return False
    images = [p for p in children if p.suffix.lower() in TILE_IMAGE_EXTENSIONS]
    return bool(images) and not any(_looks_like_slide(p) for p in images)


def tile_folders_in(path: Path) -> list[Path]:
    """The sub-folders of ``path`` that are tile folders (one slide each), sorted by name.

    This is the usual layout of pre-cut tiles: one folder of tile images per slide or patient,
    the folder's name being the slide id. Hidden sub-folders are ignored; nothing deeper is
    searched.
    """
    path = Path(path)
    if not path.is_dir():
        return []
    subfolders = (p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    return sorted((p for p in subfolders if is_tile_folder(p)), key=lambda p: p.name)


def _tile_images(path: Path) -> list[Path]:
    return sorted(
        (
            p
            for p in path.iterdir()
            if p.suffix.lower() in TILE_IMAGE_EXTENSIONS
            and not p.name.startswith(".")
            and p.is_file()
        ),
        key=lambda p: p.name,
    )


def _looks_like_slide(path: Path) -> bool:
    """Too large for a tile, or a tiled / multi-page (pyramidal) TIFF. Unreadable: a bad tile."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if max(image.size) > MAX_TILE_SIDE:
                    return True
                if image.format == "TIFF":
                    tiled = _TIFF_TILE_WIDTH_TAG in getattr(image, "tag_v2", {})
                    return tiled or getattr(image, "n_frames", 1) > 1
    except Image.DecompressionBombError:
        return True  # far beyond Pillow's pixel limit: certainly not a tile
    except _DECODE_ERRORS:
        return False  # reported per tile when read
    return False
