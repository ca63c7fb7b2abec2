"""Loaders for the layouts users bring to the robustness audit.

Each loader returns a :class:`TileDataset` (tile images with class, center and slide) or, for
per-slide feature files, :class:`LabelledEmbeddings`:

- :func:`load_tile_table`: a CSV/TSV with one row per tile, including PathoROB's split tables
  as they are (``subset, slide_id, patch_id, biological_class, medical_center``);
- :func:`load_class_folders`: ``root/<class>/<tiles>`` or ``root/<center>/<class>/<tiles>``;
- :func:`load_camelyon17_wilds`: the Camelyon17-WILDS folder (``metadata.csv`` + ``patches/``);
- :func:`load_medmnist`: a MedMNIST-style ``.npz`` of images and labels, held in memory;
- :func:`load_feature_cohort`: per-slide HDF5 feature files plus a cohort table.

Every loader checks the whole input before it returns and reports all problems of a table in
one :class:`AuditDataError`, naming the file, the rows and what to do. Folders are listed once
each rather than probed file by file, so tables of hundreds of thousands of tiles load quickly.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from histoguard.core._tables import read_delimited, slide_id_problem
from histoguard.errors import AuditDataError
from histoguard.mil._cohort import format_problems
from histoguard.robustness.data._containers import TileDataset

#: Tile image file suffixes the loaders look for, in order of preference when one stem has
#: several.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")

# Accepted names for each column, first match wins.
_IMAGE_COLUMNS = ("path", "image", "file")
_LABEL_COLUMNS = ("label", "biological_class")
_CENTER_COLUMNS = ("center", "medical_center")
_SLIDE_COLUMNS = ("slide_id", "slide", "patient", "case_id")
_PATCH_COLUMN = "patch_id"
_SUBSET_COLUMN = "subset"

_CAMELYON_COLUMNS = ("patient", "node", "x_coord", "y_coord", "tumor", "center")
_CAMELYON_LABELS = {"0": "normal", "1": "tumor"}

# Missing files named in an error before the rest are only counted.
_MAX_NAMED = 5


# --- tables ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Table:
    """A delimited text table: stripped header and data rows with their spreadsheet numbers."""

    path: Path
    header: tuple[str, ...]
    rows: tuple[dict[str, str], ...]
    numbers: tuple[int, ...]

    def column(self, names: Sequence[str]) -> str | None:
        """The first of ``names`` that is a column of the table."""
        return next((name for name in names if name in self.header), None)

    def values(self, column: str) -> list[str]:
        return [row.get(column, "") for row in self.rows]


def _read_table(path: Path) -> _Table:
    """Read a CSV (``.tsv``: tab-separated) table; rows with the wrong field count are errors.

    Raises:
        AuditDataError: missing, unreadable or empty table, or rows whose field count differs
            from the header's (all such rows listed).
    """
    header_cells, lines = read_delimited(path, error=AuditDataError)
    header = tuple(header_cells)
    rows, numbers, problems = [], [], []
    for number, cells in lines:
        if len(cells) != len(header):
            problems.append(f"row {number}: {len(cells)} fields but the header has {len(header)}")
        rows.append(dict(zip(header, cells, strict=False)))
        numbers.append(number)
    _raise_if(path, problems, "Fix these rows (quote cells that contain the delimiter).")
    return _Table(path=path, header=header, rows=tuple(rows), numbers=tuple(numbers))


def _raise_if(source: Path, problems: Sequence[str], fix: str) -> None:
    """Raise one :class:`AuditDataError` listing ``problems``, if there are any."""
    if problems:
        raise AuditDataError(format_problems(str(source), problems, fix))


def _require_columns(table: _Table, required: dict[str, Sequence[str]]) -> dict[str, str]:
    """The table's column for each role in ``required`` (role -> accepted names).

    Raises:
        AuditDataError: naming every role with none of its accepted columns.
    """
    found = {role: table.column(names) for role, names in required.items()}
    missing = [
        f"{role} (one of {', '.join(required[role])})" for role, col in found.items() if col is None
    ]
    if missing:
        raise AuditDataError(
            f"{table.path}: missing column(s) {'; '.join(missing)}; the table has columns "
            f"{list(table.header)}. Rename or add the columns."
        )
    return {role: col for role, col in found.items() if col is not None}


def _empty_cells(table: _Table, columns: Sequence[str]) -> list[str]:
    """One problem per row and column whose cell is empty."""
    return [
        f"row {number}: empty {column}"
        for number, row in zip(table.numbers, table.rows, strict=True)
        for column in columns
        if not row.get(column)
    ]


def _unsafe_names(table: _Table, columns: Sequence[str]) -> list[str]:
    """One problem per cell of ``columns`` that cannot be a file name inside a folder."""
    return [
        f"row {number} ({column}): {problem}"
        for number, row in zip(table.numbers, table.rows, strict=True)
        for column in columns
        if row.get(column) and (problem := slide_id_problem(row[column]))
    ]


# --- files -------------------------------------------------------------------------------------


class _FolderIndex:
    """Names of the files in folders, each folder listed at most once."""

    def __init__(self) -> None:
        self._names: dict[Path, frozenset[str]] = {}
        self._images: dict[Path, dict[str, str]] = {}

    def names(self, folder: Path) -> frozenset[str]:
        """File and folder names in ``folder``; empty when it is not a folder."""
        if folder not in self._names:
            try:
                self._names[folder] = frozenset(entry.name for entry in folder.iterdir())
            except (FileNotFoundError, NotADirectoryError):
                self._names[folder] = frozenset()
        return self._names[folder]

    def exists(self, path: Path) -> bool:
        """Whether ``path`` is an entry of its folder."""
        return path.name in self.names(path.parent)

    def image_by_stem(self, folder: Path, stem: str) -> Path | None:
        """The image in ``folder`` whose name is ``stem`` plus an image suffix, if any."""
        if folder not in self._images:
            ranked: dict[str, tuple[int, str]] = {}
            for name in self.names(folder):
                suffix = Path(name).suffix.lower()
                if suffix in IMAGE_SUFFIXES:
                    rank = (IMAGE_SUFFIXES.index(suffix), name)
                    key = Path(name).stem
                    ranked[key] = min(ranked.get(key, rank), rank)
            self._images[folder] = {key: name for key, (_, name) in ranked.items()}
        found = self._images[folder].get(stem)
        return None if found is None else folder / found


def _missing_files(missing: Sequence[str], total: int) -> str:
    """One problem line: how many of ``total`` files are missing, the first few named."""
    named = ", ".join(missing[:_MAX_NAMED])
    more = f" and {len(missing) - _MAX_NAMED} more" if len(missing) > _MAX_NAMED else ""
    return f"{len(missing)} of {total} tile image(s) not found: {named}{more}"


def _slides_in_several_centers(slide_id: Sequence[str], center: Sequence[str]) -> list[str]:
    """One problem per slide whose tiles name more than one center (a slide has one)."""
    centers: dict[str, set[str]] = defaultdict(set)
    for slide, site in zip(slide_id, center, strict=True):
        centers[slide].add(site)
    return [
        f"slide {slide!r} appears under centers {sorted(sites)}; a slide comes from one center"
        for slide, sites in centers.items()
        if len(sites) > 1
    ]


def _warn_each_tile_own_slide(source: Path, fix: str) -> None:
    warnings.warn(
        f"{source}: no slide ids, so each tile is treated as its own slide and neighbours or "
        f"splits cannot keep tiles of one slide together; {fix}",
        UserWarning,
        stacklevel=3,
    )


# --- tile tables -------------------------------------------------------------------------------


def load_tile_table(table: Path, *, image_root: Path | None = None) -> TileDataset:
    """Tile images listed in a CSV/TSV table, one row per tile.

    Columns (first accepted name found wins):

    - image: ``path`` (or ``image``, ``file``), absolute or relative to ``image_root``; without
      one, PathoROB's ``patch_id``: the image ``<patch_id>.<png|jpg|jpeg|tif|tiff>`` is looked up
      in ``image_root/<slide_id>/``, then in ``image_root``;
    - class: ``label`` (or ``biological_class``);
    - center: ``center`` (or ``medical_center``);
    - slide: ``slide_id`` (or ``slide``, ``patient``, ``case_id``); optional.

    Other columns (PathoROB's ``subset``) are ignored; see :func:`ood_centers_from_table`.

    Args:
        table: the table (``.tsv`` is tab-separated, anything else comma-separated).
        image_root: folder that relative paths and patch ids resolve against; default the
            table's folder.

    Returns:
        The tiles, in table order, images left on disk.

    Warns:
        UserWarning: the table has no slide column, so each tile is its own slide.

    Raises:
        AuditDataError: the table is missing or unreadable; a required column is missing; or,
            all in one message, empty cells, missing image files (first few named, all
            counted), one image listed for tiles of different slides, a slide under several
            centers.
    """
    data = _read_table(table)
    root = image_root if image_root is not None else table.parent
    image_names = (*_IMAGE_COLUMNS, _PATCH_COLUMN)
    columns = _require_columns(
        data, {"image": image_names, "label": _LABEL_COLUMNS, "center": _CENTER_COLUMNS}
    )
    slide_column = data.column(_SLIDE_COLUMNS)
    problems = _empty_cells(data, [*columns.values(), *([slide_column] if slide_column else [])])

    images = data.values(columns["image"])
    if slide_column is None:
        _warn_each_tile_own_slide(table, f"add a slide_id column ({', '.join(_SLIDE_COLUMNS)})")
        slides = images
    else:
        slides = data.values(slide_column)
    if columns["image"] == _PATCH_COLUMN:
        # Slide ids and patch ids become folder and file names under image_root.
        problems += _unsafe_names(
            data, [columns["image"], *([slide_column] if slide_column else [])]
        )
        paths, missing = _find_patches(images, slides if slide_column else None, root)
        where = f"{root}/<slide_id>/ or {root}"
    else:
        paths, missing = _find_paths(images, root)
        where = str(root)
    if missing:
        problems.append(_missing_files(missing, len(paths)) + f" (looked in {where})")
    problems += _shared_images(paths, slides)
    centers = data.values(columns["center"])
    problems += _slides_in_several_centers(slides, centers)
    _raise_if(
        table,
        problems,
        "Fix the table, or pass image_root= the folder that holds the tile images.",
    )
    return TileDataset(
        paths=np.array([str(p) for p in paths]),
        label=np.array(data.values(columns["label"])),
        center=np.array(centers),
        slide_id=np.array(slides),
    )


def _find_paths(images: Sequence[str], root: Path) -> tuple[list[Path], list[str]]:
    """Resolve ``path`` cells against ``root``; the paths and the cells whose file is missing."""
    index = _FolderIndex()
    paths = [Path(cell) if Path(cell).is_absolute() else root / cell for cell in images]
    missing = [
        cell for cell, path in zip(images, paths, strict=True) if cell and not index.exists(path)
    ]
    return paths, missing


def _find_patches(
    patch_ids: Sequence[str], slides: Sequence[str] | None, root: Path
) -> tuple[list[Path], list[str]]:
    """Find each patch id's image in ``root/<slide>/`` or ``root``; paths and missing ids."""
    index = _FolderIndex()
    paths: list[Path] = []
    missing: list[str] = []
    for i, patch in enumerate(patch_ids):
        folders = ([root / slides[i]] if slides is not None and slides[i] else []) + [root]
        found = next((p for f in folders if (p := index.image_by_stem(f, patch)) is not None), None)
        if found is None:
            # A placeholder of its own, so that missing tiles are not also reported as shared.
            missing.append(f"{slides[i]}/{patch}" if slides is not None else patch)
            found = (root / slides[i] / patch) if slides is not None else root / patch
        paths.append(found)
    return paths, missing


def _shared_images(paths: Sequence[Path], slides: Sequence[str]) -> list[str]:
    """One problem per image file listed for tiles of more than one slide."""
    owners: dict[Path, set[str]] = defaultdict(set)
    for path, slide in zip(paths, slides, strict=True):
        owners[path].add(slide)
    return [
        f"{path} is listed for slides {sorted(s)}; give each slide's tiles their own files "
        "(PathoROB layout: image_root/<slide_id>/<patch_id>.png)"
        for path, s in owners.items()
        if len(s) > 1
    ]


def ood_centers_from_table(table: Path) -> tuple[str, ...]:
    """The centers of a PathoROB split table's out-of-distribution rows (``subset == "OOD"``).

    Args:
        table: a tile table with a center column (``center`` or ``medical_center``).

    Returns:
        The sorted distinct centers of rows whose ``subset`` is ``OOD`` (any case); empty when
        the table has no ``subset`` column.

    Raises:
        AuditDataError: the table is missing or unreadable, or has no center column.
    """
    data = _read_table(table)
    center = _require_columns(data, {"center": _CENTER_COLUMNS})["center"]
    if _SUBSET_COLUMN not in data.header:
        return ()
    return tuple(
        sorted({r[center] for r in data.rows if r.get(_SUBSET_COLUMN, "").upper() == "OOD"})
    )
