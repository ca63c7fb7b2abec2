"""A folder of tile images read as one "slide" (datasets shipped as tiles, e.g. LC25000, GlaS).

What counts as a tile folder (:func:`is_tile_folder`): a directory whose own files (not its
subfolders; hidden files ignored) are tile images (:data:`TILE_IMAGE_EXTENSIONS`, at most
:data:`MAX_TILE_SIDE` pixels on each side, no tiled or multi-page TIFF) for at least
:data:`TILE_SHARE` of its image and whole-slide files. A stray large image or ``.svs`` among
hundreds of tiles is left out and reported (:attr:`TileFolder.left_out`) instead of turning the
folder into a folder of slides; a folder of large images or of pyramidal TIFFs is a folder of
slides. A folder of folders is not one slide: each of its sub-folders that is a tile folder is
one slide (:func:`tile_folders_in`), named after the sub-folder.

A tile that decodes to one colour (black, white, fully transparent: :func:`~._qc.is_constant`)
or is smaller than :data:`MIN_TILE_SIDE` is reported as a failed tile, never embedded.

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
from histoguard.slide._qc import is_constant

TILE_IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff"})

#: A tile image larger than this on either side is not a tile (a slide, or an overview).
MAX_TILE_SIDE = 4096
#: A decoded tile smaller than this on either side (pixels) is refused: nothing to encode.
MIN_TILE_SIDE = 16
#: Least share of a folder's image and whole-slide files that must be tiles for a tile folder.
TILE_SHARE = 0.9

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
        left_out: ``(name, why)`` of the folder's files that are not tiles (a whole-slide file,
            an image too large for a tile, a pyramidal TIFF), in name order.
    """

    path: Path
    names: tuple[str, ...]
    left_out: tuple[tuple[str, str], ...] = ()

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
        tiles, others = _sorted_files(path)
        names = tuple(p.name for p in tiles)
        if not names:
            raise UnsupportedFormatError(
                path,
                f"no tile images in {path}",
                f"Put the tiles ({', '.join(sorted(TILE_IMAGE_EXTENSIONS))}) directly in it",
            )
        return cls(path=path, names=names, left_out=tuple((p.name, why) for p, why in others))

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
                _check_content(path, tile)
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

    Reads only image headers.
    """
    path = Path(path)
    # A MIRAX slide's data folder is named like the slide and holds no images anyway.
    if not path.is_dir() or path.suffix.lower() == ".mrxs":
        return False
    tiles, others = _sorted_files(path)
    return bool(tiles) and len(tiles) >= TILE_SHARE * (len(tiles) + len(others))


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


def _sorted_files(path: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The folder's tile images, and its other image and whole-slide files with why each is no
    tile, both in name order. Hidden files and other extensions are ignored."""
    tiles: list[Path] = []
    others: list[tuple[Path, str]] = []
    for p in sorted(path.iterdir(), key=lambda p: p.name):
        if p.name.startswith(".") or not p.is_file():
            continue
        suffix = p.suffix.lower()
        if suffix in _WHOLE_SLIDE_EXTENSIONS:
            others.append((p, "a whole-slide file"))
        elif suffix in TILE_IMAGE_EXTENSIONS:
            why = _not_a_tile(p)
            if why:
                others.append((p, why))
            else:
                tiles.append(p)
    return tiles, others


def _not_a_tile(path: Path) -> str:
    """Why the image is no tile (too large, or a tiled / multi-page TIFF), "" when it may be one.
    An unreadable header may be a tile: its decode reports it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if max(image.size) > MAX_TILE_SIDE:
                    return f"{image.width}x{image.height} px, larger than a tile"
                if image.format == "TIFF":
                    if _TIFF_TILE_WIDTH_TAG in getattr(image, "tag_v2", {}):
                        return "a tiled TIFF (a slide)"
                    if getattr(image, "n_frames", 1) > 1:
                        return "a multi-page TIFF (a slide)"
    except Image.DecompressionBombError:
        return "far beyond Pillow's pixel limit"
    except _DECODE_ERRORS:
        return ""
    return ""


def _check_content(path: Path, tile: np.ndarray) -> None:
    """Refuse a decoded tile with nothing to encode: too small, or one colour.

    Raises:
        ImageError: naming the tile and what is wrong with it.
    """
    height, width = tile.shape[:2]
    if min(height, width) < MIN_TILE_SIDE:
        raise ImageError(
            str(path), f"only {width}x{height} px, too small for a tile (< {MIN_TILE_SIDE} px)",
            "Remove it from the tile folder",
        )  # fmt: skip
    if is_constant(tile):
        raise ImageError(
            str(path), "one colour (blank, black, white or fully transparent), not tissue",
            "Remove it from the tile folder",
        )  # fmt: skip
