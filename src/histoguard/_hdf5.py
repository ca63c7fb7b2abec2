"""Helpers shared by histoguard's HDF5 outputs (tile files, feature files)."""

from __future__ import annotations

import hashlib
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


def plain(value: Any) -> Any:
    """An HDF5 attribute value as plain Python: bytes decoded, numpy scalars unwrapped."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value
