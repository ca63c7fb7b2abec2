"""What the robustness audit measures: embeddings or tile images, each with its biological class,
its medical center and the slide it comes from.

Two containers, one per kind of input:

- :class:`LabelledEmbeddings`: ``(N, D)`` embeddings (from any encoder, or read from feature
  files) with per-embedding ``label`` (biological class), ``center`` and ``slide_id``. The
  representation metrics (robustness index, APD, clustering score) need only this.
- :class:`TileDataset`: tile images on disk with the same per-tile metadata, loaded on demand as
  ``(B, H, W, 3)`` uint8 RGB. Stress tests and attacks need pixels.

Both are immutable; ``subset`` returns a new one. Metadata arrays are numpy string arrays so that
masks such as ``data.center == "RUMC"`` read naturally.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

# check_tiles lives with the perturbations (augment/) that need it upstream; re-exported here.
from histoguard.augment._registry import check_tiles as check_tiles
from histoguard.core._image import ResizePolicy, decode_image, resize_tile_images
from histoguard.errors import AuditDataError, ImageError

if TYPE_CHECKING:
    from histoguard.encoders import EncoderInfo

StrArray = npt.NDArray[np.str_]
IndexArray = npt.NDArray[np.int64] | npt.NDArray[np.bool_]
_DEFAULT_RESIZE = ResizePolicy()


def _strings(values: Sequence[str] | np.ndarray, name: str, n: int) -> StrArray:
    array = np.asarray(values).astype(str)
    if array.shape != (n,):
        raise AuditDataError(f"{name} must have one entry per item ({n}), got shape {array.shape}")
    return array


class _ClassesAndCenters:
    """The class and center names of a container with ``label`` and ``center`` arrays."""

    label: StrArray
    center: StrArray

    @property
    def classes(self) -> tuple[str, ...]:
        """Biological classes, sorted."""
        return tuple(sorted(set(self.label.tolist())))

    @property
    def centers(self) -> tuple[str, ...]:
        """Centers, sorted."""
        return tuple(sorted(set(self.center.tolist())))


@dataclass(frozen=True, eq=False)
class LabelledEmbeddings(_ClassesAndCenters):
    """Embeddings with the metadata the robustness metrics need.

    Attributes:
        embeddings: ``(N, D)`` float32 embeddings (not normalised; metrics normalise as needed).
        label: ``(N,)`` biological class of each embedding.
        center: ``(N,)`` medical center (or scanner, or lab) of each embedding.
        slide_id: ``(N,)`` slide (or patient/case) each embedding comes from; neighbours from the
            query's own slide are never counted.
        item_id: ``(N,)`` a name per embedding (tile file, patch id, ``slide:index``).
    """

    embeddings: npt.NDArray[np.float32]
    label: StrArray
    center: StrArray
    slide_id: StrArray
    item_id: StrArray = field(default_factory=lambda: np.empty(0, dtype=str))

    def __post_init__(self) -> None:
        emb = np.asarray(self.embeddings, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[0] == 0:
            raise AuditDataError(f"embeddings must be a non-empty (N, D) array, got {emb.shape}")
        if not np.isfinite(emb).all():
            bad = int((~np.isfinite(emb).all(axis=1)).sum())
            raise AuditDataError(
                f"{bad} embeddings contain NaN or infinity; re-extract them or drop those rows"
            )
        n = emb.shape[0]
        object.__setattr__(self, "embeddings", emb)
        object.__setattr__(self, "label", _strings(self.label, "label", n))
        object.__setattr__(self, "center", _strings(self.center, "center", n))
        object.__setattr__(self, "slide_id", _strings(self.slide_id, "slide_id", n))
        items = self.item_id if len(self.item_id) else [f"{i}" for i in range(n)]
        object.__setattr__(self, "item_id", _strings(items, "item_id", n))

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    @property
    def dim(self) -> int:
        """Embedding length D."""
        return int(self.embeddings.shape[1])

    def subset(self, index: IndexArray) -> LabelledEmbeddings:
        """The embeddings selected by an integer index or boolean mask."""
        return LabelledEmbeddings(
            embeddings=self.embeddings[index],
            label=self.label[index],
            center=self.center[index],
            slide_id=self.slide_id[index],
            item_id=self.item_id[index],
        )


@dataclass(frozen=True, eq=False)
class TileDataset(_ClassesAndCenters):
    """Tile image files with per-tile biological class, center and slide.

    Attributes:
        paths: ``(N,)`` tile image files (PNG, JPEG, TIFF), or in-memory tiles when ``images``
            is given.
        label, center, slide_id: ``(N,)`` as in :class:`LabelledEmbeddings`.
        images: optional ``(N, H, W, 3)`` uint8 tiles held in memory (MedMNIST-style arrays,
            simulated cohorts); when given, ``paths`` are names only.
    """

    paths: StrArray
    label: StrArray
    center: StrArray
    slide_id: StrArray
    images: npt.NDArray[np.uint8] | None = None

    def __post_init__(self) -> None:
        n = len(self.paths)
        if n == 0:
            raise AuditDataError("the tile dataset is empty")
        object.__setattr__(self, "paths", _strings(self.paths, "paths", n))
        object.__setattr__(self, "label", _strings(self.label, "label", n))
        object.__setattr__(self, "center", _strings(self.center, "center", n))
        object.__setattr__(self, "slide_id", _strings(self.slide_id, "slide_id", n))
        if self.images is not None and (
            self.images.ndim != 4
            or self.images.shape[0] != n
            or self.images.shape[3] != 3
            or self.images.dtype != np.uint8
        ):
            raise AuditDataError(
                f"images must be ({n}, H, W, 3) uint8, got {self.images.shape} {self.images.dtype}"
            )

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, index: IndexArray) -> TileDataset:
        """The tiles selected by an integer index or boolean mask."""
        return TileDataset(
            paths=self.paths[index],
            label=self.label[index],
            center=self.center[index],
            slide_id=self.slide_id[index],
            images=None if self.images is None else self.images[index],
        )

    def load(
        self,
        index: IndexArray | None = None,
        *,
        size: int | None = None,
        resize: ResizePolicy = _DEFAULT_RESIZE,
    ) -> np.ndarray:
        """Tiles as one ``(B, S, S, 3)`` uint8 array, resized to ``size`` pixels when given (by
        ``resize``: pass the encoder's ``info.input_size`` and ``info.resize``, and tiles are
        resized exactly as ``extract`` resizes them), else all at the size of the first tile.

        Raises:
            AuditDataError: a file cannot be read (the message names it), a tile is refused by
                the resize policy (not square under ``aspect="refuse"``), or tiles differ in
                size and no ``size`` was given.
        """
        rows = np.arange(len(self))[index] if index is not None else np.arange(len(self))
        if self.images is not None:
            tiles = self.images[rows]
            if size is not None and tiles.shape[1:3] != (size, size):
                tiles = self._resized(tiles, size, resize, "in-memory tiles")
            return np.ascontiguousarray(tiles)
        out: list[np.ndarray] = []
        for row in rows:
            tile = read_tile(Path(self.paths[row]))
            if size is not None:
                tile = self._resized(tile, size, resize, str(self.paths[row]))
            elif out and tile.shape != out[0].shape:
                raise AuditDataError(
                    f"{self.paths[row]}: tile is {tile.shape[1]}x{tile.shape[0]} px but earlier "
                    f"tiles are {out[0].shape[1]}x{out[0].shape[0]}; pass a tile size"
                )
            out.append(tile)
        return np.stack(out) if out else np.zeros((0, size or 1, size or 1, 3), np.uint8)

    def load_for(self, encoder: EncoderInfo, index: IndexArray | None = None) -> np.ndarray:
        """Tiles as ``encoder`` takes them: ``(B, S, S, 3)`` uint8 at its ``input_size``,
        resized by its ``resize`` policy (as :meth:`load` with those two).

        Raises:
            AuditDataError: as :meth:`load`.
        """
        return self.load(index, size=encoder.input_size, resize=encoder.resize)

    @staticmethod
    def _resized(tiles: np.ndarray, size: int, resize: ResizePolicy, what: str) -> np.ndarray:
        try:
            return resize_tile_images(tiles, size, resize, what=what)
        except ImageError as error:
            raise AuditDataError(str(error)) from error


def read_tile(path: Path) -> np.ndarray:
    """One tile image file as ``(H, W, 3)`` uint8 RGB, decoded as everywhere in histoguard
    (transparency composited on white, Pillow's pixel limit; see ``core._image.decode_image``).

    Raises:
        AuditDataError: missing or undecodable file (named in the message).
    """
    if not Path(path).is_file():
        raise AuditDataError(f"{path}: tile image not found; check the table's paths")
    try:
        return decode_image(path)
    except ImageError as error:
        raise AuditDataError(
            f"{path}: cannot decode tile image ({error.problem}); remove or replace it"
        ) from error
