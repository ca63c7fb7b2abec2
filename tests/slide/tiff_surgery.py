"""Building broken and hostile slide files for tests: small valid TIFFs, then byte surgery."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

RGB = np.zeros((192, 256, 3), np.uint8)  # 4 x 3 tiles of 64 x 64


def write_tiff(path: Path, pages: int = 1, **kwargs: Any) -> Path:
    """A small valid TIFF; by default tiled 64 x 64 RGB, `pages` identical images in one chain."""
    options: dict[str, Any] = {"tile": (64, 64), "photometric": "rgb", **kwargs}
    data = options.pop("data", RGB)
    byteorder, bigtiff = options.pop("byteorder", "<"), options.pop("bigtiff", False)
    with tifffile.TiffWriter(path, byteorder=byteorder, bigtiff=bigtiff) as writer:
        for _ in range(pages):
            writer.write(data, **options)
    return path


def patch(path: Path, offset: int, data: bytes) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(data)


def patch_long(path: Path, page: int, code: int, value: int) -> None:
    """Rewrite one tag entry of a little-endian classic TIFF as a single LONG `value`."""
    with tifffile.TiffFile(path) as tif:
        entry = tif.pages[page].tags[code].offset
    patch(path, entry, struct.pack("<HHII", code, 4, 1, value))


def rewrite_values(
    data: bytearray, tag: tifffile.TiffTag, change: Callable[[np.ndarray], np.ndarray]
) -> None:
    """Replace an integer tag's values in ``data`` (a little-endian classic TIFF) in place,
    keeping its type and count; new values are clipped to what the type holds."""
    fmt = f"<{tag.count}" + {3: "H", 4: "I", 16: "Q"}[int(tag.dtype)]
    at = int(tag.valueoffset)
    values = np.asarray(struct.unpack_from(fmt, data, at), dtype=np.int64)
    new = np.clip(change(values), 0, 2 ** (8 * struct.calcsize(fmt[-1])) - 1)
    struct.pack_into(fmt, data, at, *(int(v) for v in new))


def rewrite_file_values(
    path: Path, page: int, code: int, change: Callable[[np.ndarray], np.ndarray]
) -> None:
    """:func:`rewrite_values` on tag ``code`` of page ``page`` of the file at ``path``."""
    with tifffile.TiffFile(path) as tif:
        tag = tif.pages[page].tags[code]
    data = bytearray(path.read_bytes())
    rewrite_values(data, tag, change)
    path.write_bytes(bytes(data))


def next_ifd_pointer(path: Path, page: int) -> int:
    """Where a little-endian classic TIFF stores page `page`'s next-IFD offset."""
    with tifffile.TiffFile(path) as tif:
        ifd = tif.pages[page].offset
    with path.open("rb") as f:
        f.seek(ifd)
        (n,) = struct.unpack("<H", f.read(2))
    return ifd + 2 + 12 * n


def ifd_offset(path: Path, page: int) -> int:
    with tifffile.TiffFile(path) as tif:
        return int(tif.pages[page].offset)


def make_bad_inputs(folder: Path) -> dict[str, Path]:
    """One file per kind of bad input a batch must survive, keyed by a short name.

    Returns:
        ``missing``, ``empty``, ``text_svs``, ``huge`` (claims 2**31 x 2**31 pixels),
        ``looping`` (directory chain loops) and ``truncated`` (a valid TIFF cut in half).
    """
    folder.mkdir(parents=True, exist_ok=True)
    bad = {name: folder / f"{name}.svs" for name in ("missing", "empty", "text_svs")}
    bad["empty"].write_bytes(b"")
    bad["text_svs"].write_text("this is a text file, not a slide\n")
    bad["huge"] = write_tiff(folder / "huge.tiff")
    patch_long(bad["huge"], 0, 256, 2**31)
    patch_long(bad["huge"], 0, 257, 2**31)
    bad["looping"] = write_tiff(folder / "looping.tiff", pages=2)
    patch(
        bad["looping"],
        next_ifd_pointer(bad["looping"], 1),
        struct.pack("<I", ifd_offset(bad["looping"], 0)),
    )
    whole = write_tiff(folder / "whole.tiff").read_bytes()
    bad["truncated"] = folder / "truncated.tiff"
    bad["truncated"].write_bytes(whole[: len(whole) // 2])
    (folder / "whole.tiff").unlink()
    return bad


def corrupt_tiles(path: Path, page: int, tiles: list[int]) -> None:
    """Overwrite the start of some tiles' compressed data so they cannot be decoded."""
    with tifffile.TiffFile(path) as tif:
        offsets = tif.pages[page].dataoffsets
    for index in tiles:
        patch(path, int(offsets[index]), b"\x00" * 32)
