"""The per-slide tile file: ``coords`` plus QC scores and provenance, in HDF5.

Layout (CLAM/TRIDENT users recognise it)::

    /coords               (N, 2) int64   level-0 x, y of each tile's top-left corner
    /tissue_fraction      (N,) float32   tissue-mask coverage of the tile, 0-1
    /background_fraction  (N,) float32   near-white pixel fraction of the tile, 0-1
    /blur_score           (N,) float32   variance of the Laplacian (0-255 grey scale)
    /rejected/coords      (M, 2) int64   tiles on tissue left out by the integrity checks
    /rejected/reason      (M,) uint8     why: index into the group's ``reasons`` attribute
                                         (:data:`REJECT_REASONS`: unreadable, constant,
                                         duplicate)
    attrs: mpp, tile_size, overlap, level, level0_tile_size, read_size, slide_mpp, slide_path,
           edge ("pad": partial edge tiles kept, white beyond the slide; "drop": whole tiles
           only), patch_size_level0 (TRIDENT's name for level0_tile_size),
           histoguard_version, n_tiles, coords_sha256, config_json, ...

The same attributes are also set on ``coords`` itself (with CLAM's ``patch_level`` and
``patch_size``) because CLAM-style readers look there. With ``edge="pad"`` the last tile of a
row or column may reach past the slide (``x + level0_tile_size > level0_width``). Files written
before the ``rejected`` group existed read back with no rejected tiles.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from histoguard.core._atomic import atomic_output
from histoguard.core._hdf5 import plain, sha256_of, write_attributes
from histoguard.errors import OutputError

QC_DATASETS = ("tissue_fraction", "background_fraction", "blur_score")

#: Why a tile on tissue was left out, by code (the index): it failed to decode, it is one colour
#: (a zero-filled or blank region), or its pixels repeat another tile's exactly.
REJECT_REASONS = ("unreadable", "constant", "duplicate")


@dataclass(frozen=True)
class CoordsFile:
    """A verified tile file's content: coords ``(N, 2)`` int64, QC arrays ``(N,)``, attributes,
    and the tiles left out: ``rejected`` ``(M, 2)`` int64 with ``rejected_reason`` ``(M,)`` str
    (one of :data:`REJECT_REASONS`)."""

    coords: np.ndarray
    qc: dict[str, np.ndarray] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)
    rejected: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.int64))
    rejected_reason: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype="<U10"))


def _sha256(coords: np.ndarray) -> str:
    return sha256_of(np.asarray(coords, dtype="<i8"))


def read_coords_file(path: Path) -> CoordsFile:
    """Read and verify a tile file written by histoguard.

    Raises:
        OutputError: the file is unreadable, incomplete or its checksum does not match.
    """
    import h5py

    try:
        with h5py.File(path, "r") as h5:
            coords = np.asarray(h5["coords"][:])
            qc = {name: np.asarray(h5[name][:]) for name in QC_DATASETS if name in h5}
            attrs = {key: plain(value) for key, value in h5.attrs.items()}
            rejected, reason = _read_rejected(path, h5)
    except (OSError, KeyError, ValueError) as error:
        raise OutputError(f"{path}: not a readable tile file ({error})") from error
    n_tiles = attrs.get("n_tiles")
    if coords.ndim != 2 or coords.shape[1] != 2 or coords.dtype != np.int64:
        raise OutputError(
            f"{path}: coords has shape {coords.shape} {coords.dtype}, not (N, 2) int64"
        )
    if n_tiles != len(coords):
        raise OutputError(f"{path}: {len(coords)} coords but n_tiles says {n_tiles}")
    if attrs.get("coords_sha256") != _sha256(coords):
        raise OutputError(f"{path}: coords checksum does not match; the file is damaged")
    for name, values in qc.items():
        if values.shape != (len(coords),):
            raise OutputError(f"{path}: {name} has shape {values.shape}, expected ({len(coords)},)")
    return CoordsFile(coords=coords, qc=qc, attrs=attrs, rejected=rejected, rejected_reason=reason)


def _read_rejected(path: Path, h5: Any) -> tuple[np.ndarray, np.ndarray]:
    """The ``rejected`` group's coords and reason names; empty for files written before it."""
    if "rejected" not in h5:
        return np.zeros((0, 2), dtype=np.int64), np.zeros(0, dtype="<U10")
    group = h5["rejected"]
    coords = np.asarray(group["coords"][:])
    codes = np.asarray(group["reason"][:])
    names = [str(plain(name)) for name in group.attrs["reasons"]]
    if coords.ndim != 2 or coords.shape[1] != 2 or codes.shape != (len(coords),):
        raise OutputError(
            f"{path}: rejected tiles have shapes {coords.shape} and {codes.shape}, "
            "not (M, 2) and (M,)"
        )
    if len(codes) and int(codes.max()) >= len(names):
        raise OutputError(f"{path}: rejected reason code {int(codes.max())} has no name")
    return coords.astype(np.int64), np.array(names, dtype="<U10")[codes.astype(np.intp)]


def write_coords_file(
    path: Path,
    coords: np.ndarray,
    qc: Mapping[str, np.ndarray],
    attrs: Mapping[str, Any],
    *,
    rejected: np.ndarray | None = None,
    rejected_reason: Sequence[str] = (),
) -> CoordsFile:
    """Write a tile file atomically and verify it before it appears under ``path``.

    Args:
        path: final ``<slide_stem>.h5`` path.
        coords: ``(N, 2)`` int64 level-0 top-left corners.
        qc: per-tile ``(N,)`` arrays named as in :data:`QC_DATASETS`.
        attrs: provenance attributes (JSON-compatible scalars and strings).
        rejected: ``(M, 2)`` int64 level-0 corners of tiles on tissue left out; None: none.
        rejected_reason: ``(M,)`` why each was left out, names from :data:`REJECT_REASONS`.

    Returns:
        What was verified on disk.

    Raises:
        OutputError: the written file does not read back identical.
    """
    import h5py

    coords = np.ascontiguousarray(coords, dtype=np.int64).reshape(-1, 2)
    all_attrs = {**attrs, "n_tiles": len(coords), "coords_sha256": _sha256(coords)}
    rejected = np.ascontiguousarray(
        np.zeros((0, 2)) if rejected is None else rejected, dtype=np.int64
    ).reshape(-1, 2)
    codes = np.array([REJECT_REASONS.index(r) for r in rejected_reason], dtype=np.uint8)
    if len(codes) != len(rejected):
        raise ValueError(f"{len(rejected)} rejected tiles but {len(codes)} reasons")

    def verify(tmp: Path) -> None:
        written = read_coords_file(tmp)
        if not np.array_equal(written.coords, coords):
            raise OutputError(f"{path}: coords read back differ from those written")
        if not np.array_equal(written.rejected, rejected) or list(written.rejected_reason) != list(
            rejected_reason
        ):
            raise OutputError(f"{path}: rejected tiles read back differ from those written")

    with atomic_output(path, verify=verify) as tmp, h5py.File(tmp, "w") as h5:
        dataset = h5.create_dataset("coords", data=coords)
        for name in QC_DATASETS:
            if name in qc:
                h5.create_dataset(name, data=np.asarray(qc[name], dtype=np.float32))
        if len(rejected):
            group = h5.create_group("rejected")
            group.create_dataset("coords", data=rejected)
            group.create_dataset("reason", data=codes)
            group.attrs["reasons"] = list(REJECT_REASONS)
        write_attributes(h5, dataset, all_attrs)
    return read_coords_file(path)
