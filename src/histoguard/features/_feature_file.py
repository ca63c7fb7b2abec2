"""The per-slide feature file: one embedding per tile, in HDF5, verified by a checksum.

histoguard's layout (CLAM/TRIDENT readers recognise it)::

    /features    (N, D) float32   one embedding per tile
    /coords      (N, 2) int64     level-0 x, y of each tile's top-left corner; for a tile
                                  folder ``(index, 0)``
    /tile_names  (N,) UTF-8       optional: the tile image of each row (tile folders)
    /views       (K, N, D) float32  optional: embeddings of K augmented views of every tile
                                  (``ExtractionConfig(views=K, views_mode="store")``)
    attrs: the caller's provenance, plus n_tiles, embed_dim, content_sha256, histoguard_version
           (and n_views, views_sha256 when there are views)

``content_sha256`` covers features, coords, tile names and, when there are views,
``views_sha256`` (the views' own checksum): a plain read verifies everything but the view data
without reading it, and ``read_feature_file(path, views=True)`` also verifies that.

The attributes are also set on ``coords`` (with CLAM's ``patch_level``/``patch_size`` when the
caller gives ``level``/``read_size``), because CLAM-style readers look there. When the tile
footprint is known (``level0_tile_size``, i.e. tiles cut from a slide) the writer also sets
TRIDENT's ``patch_size_level0`` (int, tile side in level-0 pixels) on the root and on ``coords``,
where TRIDENT's slide encoders read it.

:func:`read_feature_file` also reads feature files made by other tools, which carry no checksum:
CLAM and TRIDENT (``features`` + ``coords``), the ``feats`` + ``coords`` variant, and ``features``
with a per-tile ``metadata`` dataset instead of coordinates; and CLAM's ``pt_files/*.pt`` (a
torch-saved ``(N, D)`` tensor, loaded with ``weights_only=True``, without coordinates).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from histoguard._version import __version__
from histoguard.core._atomic import atomic_output
from histoguard.core._hdf5 import plain, sha256_of, write_attributes
from histoguard.errors import OutputError

#: Attributes the writer sets itself; the caller's values for these names are replaced.
WRITER_ATTRS = (
    "n_tiles",
    "embed_dim",
    "content_sha256",
    "histoguard_version",
    "n_views",
    "views_sha256",
)

# CLAM's ``pt_files``: torch-saved tensors of the same features, without coordinates.
_TORCH_SUFFIXES = frozenset({".pt", ".pth"})

# Attributes only TRIDENT writes on ``coords``; CLAM writes patch_level/patch_size/downsample.
_TRIDENT_COORD_ATTRS = frozenset({"patch_size_level0", "target_magnification"})


@dataclass(frozen=True, eq=False)
class FeatureFile:
    """A feature file's content.

    Attributes:
        features: ``(N, D)`` float32, one row per tile.
        coords: ``(N, 2)`` int64 level-0 x, y per row; None when the file has none.
        attrs: the file's attributes (for other tools' files, the root's merged over those on
            ``coords`` and ``features``).
        tile_names: tile image of each row (tile folders; a foreign file's per-tile string
            ``metadata``), or None.
        source_format: ``"histoguard"`` (checksum verified), ``"trident"``, ``"clam"``,
            ``"feats"`` (``feats`` + ``coords``), ``"metadata"`` (``features`` + ``metadata``),
            ``"features"`` (a bare ``features`` dataset) or ``"clam-pt"`` (CLAM's ``.pt``).
        views: ``(K, N, D)`` float32 embeddings of K augmented views of every tile, when the
            file has them and they were asked for (``read_feature_file(path, views=True)``);
            else None.
    """

    features: np.ndarray
    coords: np.ndarray | None
    attrs: dict[str, Any]
    tile_names: tuple[str, ...] | None = None
    source_format: str = "histoguard"
    views: np.ndarray | None = None


def _views_sha256(views: np.ndarray) -> str:
    return sha256_of(np.asarray(views.shape, dtype="<i8"), np.asarray(views, dtype="<f4"))


def _content_sha256(
    features: np.ndarray,
    coords: np.ndarray,
    tile_names: Sequence[str] | None,
    views_sha256: str | None = None,
) -> str:
    parts: list[np.ndarray | bytes] = [
        np.asarray(features, dtype="<f4"),
        np.asarray(coords, dtype="<i8"),
    ]
    if tile_names is not None:
        # The names identify the rows of a tile folder (its coords are only indices), so a
        # damaged name must fail the checksum too. NUL cannot occur in a file name.
        parts.append("\0".join(tile_names).encode())
    if views_sha256 is not None:
        parts.append(b"\0views:" + views_sha256.encode())
    return sha256_of(*parts)


def write_feature_file(
    path: Path,
    features: np.ndarray,
    coords: np.ndarray,
    attrs: Mapping[str, Any],
    *,
    tile_names: Sequence[str] | None = None,
    views: np.ndarray | None = None,
) -> FeatureFile:
    """Write a feature file atomically; it appears under ``path`` only once verified.

    Args:
        path: final ``<slide_stem>.h5`` path.
        features: ``(N, D)`` embeddings, stored as float32.
        coords: ``(N, 2)`` integer level-0 x, y (tile folders: ``(index, 0)``).
        attrs: provenance (HDF5-compatible scalars, strings, small arrays); None values are
            left out because HDF5 has no null. :data:`WRITER_ATTRS` are set by the writer, and
            ``patch_size_level0`` is derived from ``level0_tile_size`` when that is given.
        tile_names: optional ``N`` tile image names, stored as UTF-8 strings.
        views: optional ``(K, N, D)`` embeddings of K augmented views of every tile, stored as
            float32 under ``/views`` and covered by the checksum.

    Returns:
        What was verified on disk (views included when written).

    Raises:
        ValueError: the arrays do not have the shapes above or disagree on ``N``.
        OutputError: the written file does not read back identical.
    """
    import h5py

    features = np.ascontiguousarray(features, dtype=np.float32)
    coords = np.ascontiguousarray(coords)
    if features.ndim != 2:
        raise ValueError(f"{path}: features must be (N, D), got shape {features.shape}")
    if coords.shape != (len(features), 2) or not np.issubdtype(coords.dtype, np.integer):
        raise ValueError(
            f"{path}: coords must be ({len(features)}, 2) integers to match features, "
            f"got {coords.shape} {coords.dtype}"
        )
    coords = coords.astype(np.int64, copy=False)
    names = None if tile_names is None else tuple(str(name) for name in tile_names)
    if names is not None and len(names) != len(features):
        raise ValueError(f"{path}: {len(names)} tile names for {len(features)} feature rows")
    view_attrs: dict[str, Any] = {}
    if views is not None:
        views = np.ascontiguousarray(views, dtype=np.float32)
        if views.ndim != 3 or views.shape[1:] != features.shape or len(views) < 1:
            raise ValueError(
                f"{path}: views must be (K, {len(features)}, {features.shape[1]}) to match "
                f"features, got shape {views.shape}"
            )
        view_attrs = {"n_views": len(views), "views_sha256": _views_sha256(views)}

    level0_size = attrs.get("patch_size_level0", attrs.get("level0_tile_size"))
    trident = {} if level0_size is None else {"patch_size_level0": int(level0_size)}
    all_attrs = {
        **attrs,
        **trident,
        "n_tiles": len(features),
        "embed_dim": features.shape[1],
        "content_sha256": _content_sha256(features, coords, names, view_attrs.get("views_sha256")),
        "histoguard_version": __version__,
        **view_attrs,
    }

    def verify(tmp: Path) -> None:
        written = read_feature_file(tmp, views=views is not None)
        same = (
            np.array_equal(written.features, features, equal_nan=True)
            and written.coords is not None
            and np.array_equal(written.coords, coords)
            and written.tile_names == names
            and (
                views is None
                or (written.views is not None and np.array_equal(written.views, views, True))
            )
        )
        if not same:
            raise OutputError(f"{path}: feature file read back differs from what was written")

    with atomic_output(path, verify=verify) as tmp, h5py.File(tmp, "w") as h5:
        h5.create_dataset("features", data=features)
        coords_dataset = h5.create_dataset("coords", data=coords)
        if names is not None:
            h5.create_dataset("tile_names", data=names, dtype=h5py.string_dtype("utf-8"))
        if views is not None:
            h5.create_dataset("views", data=views)
        write_attributes(h5, coords_dataset, all_attrs)
    return read_feature_file(path, views=views is not None)


def read_feature_file(path: Path, *, views: bool = False) -> FeatureFile:
    """Read a feature file: histoguard's (verified) or another tool's (see the module docs).

    Args:
        path: an ``.h5`` feature file, or a CLAM ``pt_files/<slide>.pt``: a torch-saved
            ``(N, D)`` tensor, read with ``torch.load(weights_only=True)`` (no code runs); it
            has no coords, so no heatmaps (CLAM's ``h5_files/<slide>.h5`` has both).
        views: also read (and verify) the ``(K, N, D)`` augmented views, when the file has them;
            without it they are not read and :attr:`FeatureFile.views` is None.

    Returns:
        The features (float32), coords (int64, or None), attributes and format name.

    Raises:
        OutputError: the file is unreadable, has no ``features``/``feats`` dataset (a ``.pt``
            file: holds no ``(N, D)`` tensor), its arrays
            have the wrong shapes or disagree on the number of tiles, or (histoguard files) a
            writer attribute or the checksum (of the views too, when read) does not match.
    """
    import h5py

    if Path(path).suffix.lower() in _TORCH_SUFFIXES:
        return _read_torch_features(Path(path))
    try:
        with h5py.File(path, "r") as h5:
            found = {
                name: (item.shape, item.dtype)
                for name, item in h5.items()
                if isinstance(item, h5py.Dataset)
            }
            feature_name = next((n for n in ("features", "feats") if n in found), None)
            if feature_name is None:
                raise OutputError(
                    f"{path}: no 'features' or 'feats' dataset; found {_describe(found)}"
                )
            features = np.asarray(h5[feature_name][:])
            coords = np.asarray(h5["coords"][:]) if "coords" in found else None
            names = _strings(h5["tile_names"]) if "tile_names" in found else None
            metadata = _strings(h5["metadata"]) if "metadata" in found else None
            view_data = np.asarray(h5["views"][:]) if views and "views" in found else None
            root_attrs = {key: plain(value) for key, value in h5.attrs.items()}
            foreign_attrs = {
                key: plain(value)
                for name in (feature_name, "coords")
                if name in found
                for key, value in h5[name].attrs.items()
            }
    except OutputError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as error:
        raise OutputError(f"{path}: not a readable feature file ({error})") from error

    if features.ndim != 2 or not np.issubdtype(features.dtype, np.number):
        raise OutputError(
            f"{path}: {feature_name} has shape {features.shape} {features.dtype}, "
            "expected (N, D) numbers"
        )
    n_tiles = len(features)
    if coords is not None and (coords.ndim != 2 or coords.shape != (n_tiles, 2)):
        raise OutputError(
            f"{path}: coords has shape {coords.shape} but {feature_name} has {features.shape}; "
            f"expected ({n_tiles}, 2)"
        )
    if names is not None and len(names) != n_tiles:
        raise OutputError(f"{path}: {len(names)} tile_names for {n_tiles} feature rows")

    if views and "views_sha256" in root_attrs and view_data is None:
        raise OutputError(f"{path}: views_sha256 is set but the views dataset is missing")
    if "content_sha256" in root_attrs or "histoguard_version" in root_attrs:
        return _verified(path, features, coords, names, root_attrs, view_data)

    if coords is not None:
        coords = _integer_coords(path, coords)
        source_format = "feats" if feature_name == "feats" else "clam"
        if source_format == "clam" and _TRIDENT_COORD_ATTRS & foreign_attrs.keys():
            source_format = "trident"
    elif metadata is not None:
        source_format = "metadata"
        # Per-tile strings (the real example holds tile image names) say which tile a row is.
        if names is None and len(metadata) == n_tiles:
            names = metadata
    else:
        source_format = "features"
    return FeatureFile(
        features=features.astype(np.float32, copy=False),
        coords=coords,
        attrs={**foreign_attrs, **root_attrs},
        tile_names=names,
        source_format=source_format,
    )


def finished_feature_file(path: Path, *, expect: Mapping[str, Any]) -> FeatureFile | None:
    """The feature file at ``path`` if it is finished histoguard output made with ``expect``.

    Used to resume: a run skips a slide whose output passes this check, and reports what the
    file holds (its tile count, unreadable tiles and first read error).

    Args:
        path: the feature file.
        expect: attributes the file must carry with equal values; a None value means the
            attribute must be absent (the writer leaves None out).

    Returns:
        The file's content iff it exists, is a histoguard feature file whose checksum verifies,
        and every ``expect`` item matches; None otherwise (never raises for a damaged file).
    """
    if not path.is_file():
        return None
    try:
        existing = read_feature_file(path)
    except OutputError:
        return None
    if existing.source_format != "histoguard":
        return None
    if not all(_same(existing.attrs.get(key), value) for key, value in expect.items()):
        return None
    return existing


def feature_file_done(path: Path, *, expect: Mapping[str, Any]) -> bool:
    """Whether ``path`` is a finished histoguard feature file made with the expected settings
    (:func:`finished_feature_file` is not None)."""
    return finished_feature_file(path, expect=expect) is not None


def _verified(
    path: Path,
    features: np.ndarray,
    coords: np.ndarray | None,
    names: tuple[str, ...] | None,
    attrs: dict[str, Any],
    views: np.ndarray | None = None,
) -> FeatureFile:
    """Check a file that claims histoguard's layout against its writer attributes."""
    if features.dtype != np.float32:
        raise OutputError(f"{path}: features are {features.dtype}, histoguard writes float32")
    if coords is None or coords.dtype != np.int64:
        found = "no coords" if coords is None else f"coords of type {coords.dtype}"
        raise OutputError(f"{path}: {found}; histoguard writes (N, 2) int64 coords")
    for key, expected in (("n_tiles", len(features)), ("embed_dim", features.shape[1])):
        if attrs.get(key) != expected:
            raise OutputError(f"{path}: attribute {key} is {attrs.get(key)}, data has {expected}")
    views_sha = attrs.get("views_sha256")
    if attrs.get("content_sha256") != _content_sha256(features, coords, names, views_sha):
        raise OutputError(f"{path}: content checksum does not match; the file is damaged")
    if views is not None:
        if views_sha is None or views_sha != _views_sha256(views):
            raise OutputError(f"{path}: views checksum does not match; the file is damaged")
        if views.ndim != 3 or views.shape[1:] != features.shape or views.dtype != np.float32:
            raise OutputError(
                f"{path}: views have shape {views.shape} {views.dtype}, expected "
                f"(K, {len(features)}, {features.shape[1]}) float32"
            )
    return FeatureFile(features=features, coords=coords, attrs=attrs, tile_names=names, views=views)


def _read_torch_features(path: Path) -> FeatureFile:
    """A CLAM ``pt_files`` feature file: one ``(N, D)`` tensor saved with ``torch.save``."""
    import pickle

    import torch

    clam_h5 = path.parent.parent / "h5_files" / f"{path.stem}.h5"
    fix = (
        f"use CLAM's matching {clam_h5} instead (features and coords)"
        if clam_h5.is_file()
        else "give CLAM's h5_files/<slide>.h5 instead (features and coords) or re-extract"
    )
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise OutputError(f"{path}: feature file not found; check the path") from None
    except (OSError, RuntimeError, pickle.UnpicklingError, EOFError, ValueError) as error:
        raise OutputError(
            f"{path}: not a torch-saved feature tensor, or one that needs unsafe pickle loading "
            f"({str(error).splitlines()[0] if str(error) else type(error).__name__}); {fix}"
        ) from None
    if not isinstance(loaded, torch.Tensor) or loaded.ndim != 2:
        what = (
            f"a tensor of shape {tuple(loaded.shape)}"
            if isinstance(loaded, torch.Tensor)
            else f"a {type(loaded).__name__}"
        )
        raise OutputError(f"{path}: holds {what}, expected one (N, D) feature tensor; {fix}")
    features = loaded.detach().to(torch.float32).numpy()
    return FeatureFile(
        features=np.ascontiguousarray(features),
        coords=None,
        attrs={},
        source_format="clam-pt",
    )


def _integer_coords(path: Path, coords: np.ndarray) -> np.ndarray:
    """Another tool's coords as int64; float coords are accepted only when whole numbers."""
    if np.issubdtype(coords.dtype, np.integer):
        return coords.astype(np.int64, copy=False)
    if np.issubdtype(coords.dtype, np.floating) and np.array_equal(coords, np.round(coords)):
        return coords.astype(np.int64)
    raise OutputError(f"{path}: coords are {coords.dtype} and not whole pixel positions")


def _strings(dataset: Any) -> tuple[str, ...] | None:
    """A 1-D string dataset as a tuple of str; None for anything else."""
    import h5py

    if dataset.ndim != 1 or h5py.check_string_dtype(dataset.dtype) is None:
        return None
    return tuple(str(s) for s in dataset.asstr()[:])


def _same(actual: Any, expected: Any) -> bool:
    if expected is None:
        return actual is None
    if isinstance(actual, np.ndarray) or isinstance(expected, (np.ndarray, list, tuple)):
        return bool(np.array_equal(np.asarray(actual), np.asarray(expected)))
    return bool(actual == expected)


def _describe(found: Mapping[str, tuple[tuple[int, ...], Any]]) -> str:
    if not found:
        return "no datasets"
    return ", ".join(f"{name} {shape} {dtype}" for name, (shape, dtype) in sorted(found.items()))
