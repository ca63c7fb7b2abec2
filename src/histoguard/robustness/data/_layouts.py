"""Loaders for tile layouts other than a table: class folders, Camelyon17-WILDS, MedMNIST, and
per-slide feature files with a cohort table. Checks and messages as in
:mod:`histoguard.robustness.data._tile_tables`.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from histoguard.errors import AuditDataError, OutputError
from histoguard.features import read_feature_file
from histoguard.mil import CohortError, load_cohort
from histoguard.robustness.data._containers import LabelledEmbeddings, TileDataset
from histoguard.robustness.data._tile_tables import (
    _CAMELYON_COLUMNS,
    _CAMELYON_LABELS,
    _MAX_NAMED,
    IMAGE_SUFFIXES,
    _FolderIndex,
    _missing_files,
    _raise_if,
    _read_table,
    _require_columns,
    _slides_in_several_centers,
    _warn_each_tile_own_slide,
)

# --- class folders -----------------------------------------------------------------------------


def load_class_folders(
    root: Path, *, center: str | None = None, slide_pattern: str | None = None
) -> TileDataset:
    """Tiles sorted into class folders: ``root/<class>/<tile>`` or ``root/<center>/<class>/<tile>``.

    The two-level layout is recognised when the images sit two folders below ``root``; files
    directly in ``root`` (a ``labels.csv``) are ignored.

    Args:
        root: the dataset folder.
        center: the center of a one-level layout; default ``root``'s name. Not allowed with the
            two-level layout, whose folders name the centers.
        slide_pattern: regular expression whose first group, searched in the file name, is the
            tile's slide id (e.g. ``r"^(TCGA-\\w\\w-\\w{4})"``). Without it each tile is its own
            slide (id: its path below ``root`` without suffix).

    Returns:
        The tiles sorted by path, images left on disk.

    Warns:
        UserWarning: no ``slide_pattern``, so each tile is its own slide.

    Raises:
        AuditDataError: ``root`` is not a folder or holds no images in either layout, images
            sit at both depths, ``center`` is given for a two-level layout, ``slide_pattern`` is
            invalid or has no group, or (listed together) file names it does not match and
            slides found under several centers.
    """
    if not root.is_dir():
        raise AuditDataError(f"{root}: not a folder; point root at the folder of class folders")
    pattern = _compile_slide_pattern(slide_pattern)
    files = _images_by_depth(root)
    if files[2] and files[3]:
        raise AuditDataError(
            f"{root}: images both at root/<class>/ ({len(files[2])}) and at "
            f"root/<center>/<class>/ ({len(files[3])}); keep one layout"
        )
    if not files[2] and not files[3]:
        raise AuditDataError(
            f"{root}: no tile images ({', '.join(IMAGE_SUFFIXES)}) in root/<class>/ or "
            "root/<center>/<class>/; check the folder"
        )
    if files[3] and center is not None:
        raise AuditDataError(
            f"{root}: the folders name the centers (root/<center>/<class>/); drop center="
        )
    paths = files[2] or files[3]
    parts = [p.relative_to(root).parts for p in paths]
    labels = [part[-2] for part in parts]
    centers = [part[0] for part in parts] if files[3] else [center or root.name] * len(paths)

    slides = _slide_ids(root, paths, centers, pattern)
    return TileDataset(
        paths=np.array([str(p) for p in paths]),
        label=np.array(labels),
        center=np.array(centers),
        slide_id=np.array(slides),
    )


def load_unlabelled_tiles(
    root: Path, *, center: str | None = None, slide_pattern: str | None = None
) -> TileDataset:
    """Every tile image anywhere below ``root``, without labels: what self-supervised encoder
    training (``objective="simclr"``) reads. Folder names are not taken as classes.

    Args:
        root: the folder of tiles (any depth).
        center: the tiles' center; default ``root``'s name.
        slide_pattern: as in :func:`load_class_folders`.

    Returns:
        The tiles sorted by path, label ``""``, images left on disk.

    Raises:
        AuditDataError: ``root`` is not a folder or holds no images, or ``slide_pattern`` is
            invalid or misses file names.
    """
    if not root.is_dir():
        raise AuditDataError(f"{root}: not a folder; point root at the folder of tiles")
    pattern = _compile_slide_pattern(slide_pattern)
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise AuditDataError(
            f"{root}: no tile images ({', '.join(IMAGE_SUFFIXES)}) below it; check the folder"
        )
    centers = [center or root.name] * len(paths)
    return TileDataset(
        paths=np.array([str(p) for p in paths]),
        label=np.full(len(paths), ""),
        center=np.array(centers),
        slide_id=np.array(_slide_ids(root, paths, centers, pattern)),
    )


def _slide_ids(
    root: Path, paths: list[Path], centers: list[str], pattern: re.Pattern[str] | None
) -> list[str]:
    """Each tile's slide: ``pattern``'s first group in its file name, or (no pattern, with a
    warning) the tile itself.

    Raises:
        AuditDataError: file names the pattern does not match, slides under several centers.
    """
    if pattern is None:
        _warn_each_tile_own_slide(root, "pass slide_pattern= to read slide ids from file names")
        return [str(p.relative_to(root).with_suffix("")) for p in paths]
    problems: list[str] = []
    matches = [pattern.search(p.name) for p in paths]
    slides = [m.group(1) if m else "" for m in matches]
    unmatched = [p.name for p, m in zip(paths, matches, strict=True) if m is None]
    if unmatched:
        problems.append(
            f"slide_pattern {pattern.pattern!r} does not match {len(unmatched)} file "
            f"name(s): {', '.join(unmatched[:_MAX_NAMED])}"
        )
    problems += _slides_in_several_centers(slides, centers)
    _raise_if(root, problems, "Adjust slide_pattern so its first group is the slide id.")
    return slides


def _compile_slide_pattern(slide_pattern: str | None) -> re.Pattern[str] | None:
    if slide_pattern is None:
        return None
    try:
        pattern = re.compile(slide_pattern)
    except re.error as exc:
        raise AuditDataError(
            f"slide_pattern {slide_pattern!r} is not a valid regex ({exc})"
        ) from exc
    if pattern.groups < 1:
        raise AuditDataError(
            f"slide_pattern {slide_pattern!r} has no group; wrap the slide id in parentheses"
        )
    return pattern


def _images_by_depth(root: Path) -> dict[int, list[Path]]:
    """Sorted image files at depth 2 (``root/a/f``) and 3 (``root/a/b/f``) below ``root``."""
    found: dict[int, list[Path]] = {2: [], 3: []}
    for depth in found:
        pattern = "/".join(["*"] * depth)
        found[depth] = sorted(
            p for p in root.glob(pattern) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        )
    return found


# --- Camelyon17-WILDS --------------------------------------------------------------------------


def load_camelyon17_wilds(root: Path) -> TileDataset:
    """The Camelyon17-WILDS patch dataset (96 x 96 px lymph-node patches from 5 hospitals).

    Expects ``root/metadata.csv`` (columns ``patient, node, x_coord, y_coord, tumor, slide,
    center, split``; a leading unnamed index column is ignored) and the patches at
    ``root/patches/patient_{patient:03d}_node_{node}/patch_patient_{patient:03d}_node_{node}_
    x_{x_coord}_y_{y_coord}.png``.

    Returns:
        Tiles labelled ``tumor``/``normal`` (the ``tumor`` column), centers ``center0`` ..
        ``center4``, slide ids ``patient_{patient:03d}_node_{node}``; in metadata order.

    Raises:
        AuditDataError: no ``metadata.csv``, a missing column, or (all in one message)
            non-integer patient/node/coordinates/center, a ``tumor`` value other than 0/1, and
            missing patch files (first few named, all counted).
    """
    table = root / "metadata.csv"
    if not table.is_file():
        raise AuditDataError(
            f"{table}: not found; point root at the Camelyon17-WILDS folder that holds "
            "metadata.csv and patches/"
        )
    data = _read_table(table)
    _require_columns(data, {name: (name,) for name in _CAMELYON_COLUMNS})
    problems: list[str] = []
    paths, labels, centers, slides = [], [], [], []
    for number, row in zip(data.numbers, data.rows, strict=True):
        ints = {name: _integer(row[name]) for name in _CAMELYON_COLUMNS if name != "tumor"}
        bad = [name for name, value in ints.items() if value is None]
        label = _CAMELYON_LABELS.get(row["tumor"].split(".")[0])
        if label is None:
            bad.append("tumor (must be 0 or 1)")
        if bad:
            problems.append(f"row {number}: not an integer or bad value in {', '.join(bad)}")
            continue
        slide = f"patient_{ints['patient']:03d}_node_{ints['node']}"
        name = f"patch_{slide}_x_{ints['x_coord']}_y_{ints['y_coord']}.png"
        paths.append(root / "patches" / slide / name)
        labels.append(label)
        centers.append(f"center{ints['center']}")
        slides.append(slide)
    index = _FolderIndex()
    missing = [str(p.relative_to(root)) for p in paths if not index.exists(p)]
    if missing:
        problems.append(_missing_files(missing, len(paths)) + f" (looked in {root / 'patches'})")
    _raise_if(table, problems, "Fix metadata.csv or download the missing patches.")
    return TileDataset(
        paths=np.array([str(p) for p in paths]),
        label=np.array(labels),
        center=np.array(centers),
        slide_id=np.array(slides),
    )


def _integer(cell: str) -> int | None:
    """``cell`` as an int (``"004"``, ``"4"``, ``"4.0"``), or None."""
    try:
        value = float(cell)
    except ValueError:
        return None
    return int(value) if value.is_integer() else None


# --- MedMNIST ----------------------------------------------------------------------------------


def load_medmnist(
    path: Path,
    *,
    split: str = "test",
    center: str = "medmnist",
    class_names: Sequence[str] | None = None,
) -> TileDataset:
    """One split of a MedMNIST-style ``.npz`` (e.g. PathMNIST), held in memory.

    Args:
        path: the ``.npz`` with ``{split}_images`` ``(N, H, W)`` gray or ``(N, H, W, 3)`` RGB
            uint8 and ``{split}_labels`` ``(N,)`` or ``(N, 1)`` integer class indices.
        split: which split to load (``train``, ``val``, ``test``).
        center: the center every image is assigned to (MedMNIST records none).
        class_names: name of each class index; default the index as a string.

    Returns:
        ``(N, H, W, 3)`` uint8 images (gray repeated into RGB) with paths and slide ids
        ``{split}/{index}``: each image is its own slide, since MedMNIST keeps no slide ids.

    Raises:
        AuditDataError: the file is missing or not an ``.npz``; the split's keys are absent
            (the message lists the splits present); images that are not uint8 gray/RGB; labels
            that are multi-label, not integers, negative, of another length, or outside
            ``class_names``.
    """
    arrays = _read_npz(path)
    keys = (f"{split}_images", f"{split}_labels")
    if any(key not in arrays for key in keys):
        present = sorted(k.removesuffix("_images") for k in arrays if k.endswith("_images"))
        raise AuditDataError(
            f"{path}: no {keys[0]!r}/{keys[1]!r} arrays; the file holds splits {present}. "
            "Pass split= one of them."
        )
    images = _rgb_images(path, arrays[keys[0]])
    labels = _class_indices(path, arrays[keys[1]], len(images))
    if class_names is not None and labels.max(initial=0) >= len(class_names):
        raise AuditDataError(
            f"{path}: labels go up to {labels.max()} but {len(class_names)} class_names were "
            "given; pass one name per class index"
        )
    names = (
        list(class_names) if class_names is not None else [str(i) for i in range(labels.max() + 1)]
    )
    ids = np.array([f"{split}/{i}" for i in range(len(images))])
    return TileDataset(
        paths=ids,
        label=np.array([names[i] for i in labels]),
        center=np.full(len(images), center),
        slide_id=ids,
        images=images,
    )


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise AuditDataError(f"{path}: not found; check the path to the MedMNIST .npz")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except (OSError, ValueError) as exc:
        raise AuditDataError(f"{path}: cannot be read as an .npz ({exc}); re-download it") from exc


def _rgb_images(path: Path, images: np.ndarray) -> np.ndarray:
    """``(N, H, W)`` or ``(N, H, W, 1|3)`` uint8 -> ``(N, H, W, 3)`` uint8."""
    if (
        images.dtype != np.uint8
        or images.ndim not in (3, 4)
        or (images.ndim == 4 and images.shape[3] not in (1, 3))
    ):
        raise AuditDataError(
            f"{path}: images are {images.shape} {images.dtype}; expected (N, H, W) or "
            "(N, H, W, 3) uint8"
        )
    if images.ndim == 3:
        images = images[..., None]
    return np.ascontiguousarray(np.broadcast_to(images, (*images.shape[:3], 3)))


def _class_indices(path: Path, labels: np.ndarray, n: int) -> np.ndarray:
    """``(N,)`` or ``(N, 1)`` non-negative integer labels -> ``(N,)`` int64."""
    if labels.ndim == 2 and labels.shape[1] != 1:
        raise AuditDataError(
            f"{path}: labels are {labels.shape}, i.e. multi-label; the audit needs one class "
            "per image"
        )
    flat = labels.reshape(-1)
    if len(flat) != n or not np.issubdtype(flat.dtype, np.integer) or (flat < 0).any():
        raise AuditDataError(
            f"{path}: labels are {labels.shape} {labels.dtype}; expected ({n},) or ({n}, 1) "
            "non-negative integers, one per image"
        )
    return flat.astype(np.int64)


# --- feature files -----------------------------------------------------------------------------


def load_feature_cohort(
    features_dir: Path,
    cohort_table: Path,
    *,
    max_tiles_per_slide: int | None = 256,
    seed: int = 0,
) -> LabelledEmbeddings:
    """Tile embeddings from per-slide feature files, labelled by a cohort table.

    Args:
        features_dir: folder of ``<slide_id>.h5`` feature files (histoguard's, CLAM's,
            TRIDENT's; see :func:`histoguard.features.read_feature_file`).
        cohort_table: a cohort table (see :func:`histoguard.mil.load_cohort`) with
            ``slide_id``, ``label`` and ``center`` for every slide.
        max_tiles_per_slide: keep at most this many tiles per slide, drawn at random without
            replacement (original order kept); None keeps all.
        seed: seeds the subsampling.

    Returns:
        ``(N, D)`` float32 embeddings, each with its slide's label and center, item ids
        ``{slide_id}:{row in the feature file}``; slides in table order.

    Warns:
        UserWarning: from :func:`load_cohort` when the table has no ``patient_id`` column; and
            for each feature file with no tiles (skipped).

    Raises:
        AuditDataError: ``max_tiles_per_slide`` < 1; the cohort table fails validation (one
            message listing every problem, missing feature files included); a slide has no
            center; or (listed together) unreadable feature files and embedding lengths that
            differ between slides.
    """
    if max_tiles_per_slide is not None and max_tiles_per_slide < 1:
        raise AuditDataError(f"max_tiles_per_slide must be >= 1 or None, got {max_tiles_per_slide}")
    try:
        cohort = load_cohort(cohort_table, features_dir=features_dir)
    except CohortError as exc:
        raise AuditDataError(str(exc)) from exc
    no_center = [f"slide {row.slide_id!r}: no center" for row in cohort.rows if row.center is None]
    _raise_if(
        cohort_table,
        no_center,
        "The robustness audit compares centers: give every slide a center column value.",
    )

    rng = np.random.default_rng(seed)
    problems: list[str] = []
    parts: list[LabelledEmbeddings] = []
    for row in cohort.rows:
        assert row.path is not None  # load_cohort sets it from features_dir
        try:
            features = read_feature_file(row.path).features
        except OutputError as exc:
            problems.append(f"slide {row.slide_id!r}: {exc}")
            continue
        if len(features) == 0:
            warnings.warn(
                f"{row.path}: no tiles; slide {row.slide_id!r} skipped", UserWarning, stacklevel=2
            )
            continue
        keep = np.arange(len(features))
        if max_tiles_per_slide is not None and len(features) > max_tiles_per_slide:
            keep = np.sort(rng.choice(len(features), size=max_tiles_per_slide, replace=False))
        n = len(keep)
        parts.append(
            LabelledEmbeddings(
                embeddings=features[keep],
                label=np.full(n, row.label),
                center=np.full(n, row.center),
                slide_id=np.full(n, row.slide_id),
                item_id=np.array([f"{row.slide_id}:{i}" for i in keep]),
            )
        )
    dims = Counter(part.dim for part in parts)
    if len(dims) > 1:
        common = dims.most_common(1)[0][0]
        problems += [
            f"slide {part.slide_id[0].item()!r}: {part.dim}-d embeddings, most slides have "
            f"{common}-d"
            for part in parts
            if part.dim != common
        ]
    _raise_if(features_dir, problems, "Re-extract these slides' features with one encoder.")
    if not parts:
        raise AuditDataError(f"{features_dir}: every feature file is empty; re-extract features")
    return LabelledEmbeddings(
        embeddings=np.concatenate([p.embeddings for p in parts]),
        label=np.concatenate([p.label for p in parts]),
        center=np.concatenate([p.center for p in parts]),
        slide_id=np.concatenate([p.slide_id for p in parts]),
        item_id=np.concatenate([p.item_id for p in parts]),
    )
