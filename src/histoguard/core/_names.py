"""Bounded output names, so a long slide file name never makes an output name too long.

Most filesystems (ext4, XFS, btrfs, APFS, NTFS in UTF-16 units) allow 255 bytes per name. A
slide's outputs are named after its stem plus a suffix, and each is first written to a hidden
temporary (:func:`histoguard.core._atomic.temporary_name`), so the stem gets a budget:

- :data:`MAX_STEM_BYTES` = 150 bytes of UTF-8 for the stem;
- the longest suffix written after it is ``.attention.geojson`` (18 bytes; ``.tissue.geojson``
  15, ``.thumbnail.png`` 14, ``.lock.break`` 11 after a leading ``.``), so a final name is at
  most 150 + 18 + 1 = 169 bytes;
- a temporary adds ``.`` + ``.tmp-HOST-PID-START-HEX8``: at most 1 + 5 + 63 (host cap) + 1 +
  10 (PID) + 1 + 20 (start) + 1 + 8 = 110 bytes, which leaves :data:`MAX_TEMP_FINAL_BYTES` =
  145 bytes for the final name inside a temporary's name. A longer final name is written there
  in its bounded form (:func:`bounded_part`), and cleanup compares bounded forms, so the exact
  match (``S1.h5``'s cleanup never touches ``S10.h5``'s temporaries) still holds.

A stem over budget becomes a UTF-8-safe prefix, ``~`` and the first 12 hex digits of the
SHA-256 of the whole stem: two stems that share their first 200 characters still get two
names. The original stem stays recorded in the output files (attributes ``slide_stem`` and
``slide_path``), and tables keep naming slides by it: lookups go through :func:`bounded_stem`
(:func:`feature_file`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: Most bytes (UTF-8) of a slide stem in an output name; longer stems are shortened.
MAX_STEM_BYTES = 150
#: Most bytes (UTF-8) of any single file or folder name on common filesystems.
MAX_NAME_BYTES = 255
#: Most bytes (UTF-8) of the final name as it appears inside a temporary's name.
MAX_TEMP_FINAL_BYTES = 145
_HASH_HEX = 12


def utf8_prefix(text: str, max_bytes: int) -> str:
    """The longest prefix of ``text`` whose UTF-8 encoding is at most ``max_bytes`` bytes
    (never a partial character)."""
    return text.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")


def bounded_part(text: str, max_bytes: int) -> str:
    """``text`` unchanged when its UTF-8 length is at most ``max_bytes``, else a UTF-8-safe
    prefix + ``~`` + 12 hex digits of SHA-256(``text``), at most ``max_bytes`` bytes in all."""
    encoded = text.encode("utf-8")
    if len(encoded) <= max_bytes:
        return text
    digest = hashlib.sha256(encoded).hexdigest()[:_HASH_HEX]
    return f"{utf8_prefix(text, max_bytes - _HASH_HEX - 1)}~{digest}"


def bounded_stem(stem: str) -> str:
    """How output file names spell a slide stem: at most :data:`MAX_STEM_BYTES` UTF-8 bytes.

    Returns ``stem`` unchanged when it fits, else a UTF-8-safe prefix + ``~`` + 12 hex digits
    of SHA-256(``stem``) (150 bytes). Idempotent: a bounded stem is its own bounded stem.
    """
    return bounded_part(stem, MAX_STEM_BYTES)


def feature_file(features_dir: Path, slide_id: str) -> Path:
    """Where slide ``slide_id`` (a table's id: the slide stem or its pseudonymous id) has its
    features: ``<features_dir>/<bounded_stem(slide_id)>.h5``."""
    return features_dir / f"{bounded_stem(slide_id)}.h5"


def recorded_stem(path: Path, attrs: Mapping[str, Any]) -> str:
    """The slide id an output file at ``path`` stands for: the ``slide_stem`` it records when
    that is what its (bounded) name was made from, else the file's stem."""
    recorded = str(attrs.get("slide_stem", "") or "")
    return recorded if recorded and bounded_stem(recorded) == path.stem else path.stem
