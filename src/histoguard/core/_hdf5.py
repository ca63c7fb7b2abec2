"""Helpers shared by histoguard's HDF5 outputs (tile files, feature files)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np


def sha256_of(*parts: np.ndarray | bytes) -> str:
    """Hex SHA-256 of the parts' bytes, in order.

    Arrays are hashed as their C-contiguous bytes in the dtype given, so callers pass an explicit
    little-endian dtype (``"<i8"``, ``"<f4"``) to make checksums platform-independent.
    """
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part if isinstance(part, bytes) else np.ascontiguousarray(part).tobytes())
    return digest.hexdigest()


#: CLAM's attribute names for the level read and the size read there, and histoguard's.
_CLAM_ALIASES = (("patch_level", "level"), ("patch_size", "read_size"))


def write_attributes(h5: Any, coords: Any, attrs: Mapping[str, Any]) -> None:
    """Set ``attrs`` on the open file ``h5`` and on its ``coords`` dataset, with CLAM's
    ``patch_level``/``patch_size`` aliases on ``coords`` where ``level``/``read_size`` are known.

    HDF5 has no null: a None value (e.g. an unknown objective power) is left out, not faked.
    CLAM-style readers look for attributes on ``coords``, others on the file, so both get them.
    """
    for key, value in attrs.items():
        if value is not None:
            h5.attrs[key] = value
            coords.attrs[key] = value
    for clam, ours in _CLAM_ALIASES:
        if attrs.get(ours) is not None:
            coords.attrs[clam] = attrs[ours]


def plain(value: Any) -> Any:
    """An HDF5 attribute value as plain Python: bytes decoded, numpy scalars unwrapped."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value
