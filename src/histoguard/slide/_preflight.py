"""Cheap checks on a slide file before any slide library (OpenSlide, tiffslide, Pillow) opens it.

Those libraries trust the file's header: a TIFF that claims 2**31 x 2**31 pixels, a directory chain
that loops, or a copy cut short can make them hang, allocate gigabytes or crash the process.
`preflight` sniffs the format from its magic bytes and, for TIFF, walks the image file directories
(IFDs) itself with `struct`, reading only the few tags it needs, so a hostile file is rejected with
a typed `SlideError` in milliseconds. Nothing here is sized by the declared image dimensions: the
largest read is one page's tile-offset table, which must fit inside the file.
"""

from __future__ import annotations

import enum
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

from histoguard.errors import (
    CorruptSlideError,
    SlideNotFoundError,
    SlideTooLargeError,
    UnsupportedFormatError,
)

DEFAULT_MAX_PIXELS: int = 2**36
"""Largest accepted image, in pixels (width * height): about 262k x 262k, above any real WSI."""


class FileKind(enum.StrEnum):
    """The container format `preflight` recognised."""

    TIFF = "tiff"  # classic and BigTIFF: SVS, NDPI, SCN, BIF, QPTIFF, OME-TIFF, generic TIFF
    DICOM = "dicom"
    PNG = "png"
    JPEG = "jpeg"
    MIRAX = "mirax"  # .mrxs index; the image data lives in a folder beside it
    VMS = "vms"  # Hamamatsu .vms/.vmu index plus separate JPEG files
    SAKURA = "sakura"  # Sakura .svslide, an SQLite database


@dataclass(frozen=True, kw_only=True)
class TiffPage:
    """One image of a TIFF's main IFD chain. Sizes are in pixels; tile sizes are 0 when stripped."""

    width: int
    height: int
    tiled: bool
    tile_width: int
    tile_height: int
    compression: int  # TIFF Compression code (1 none, 7 JPEG, 33005 Aperio JPEG 2000, ...)
    samples_per_pixel: int


@dataclass(frozen=True, kw_only=True)
class PreflightResult:
    """What `preflight` found: the kind of file, its size in bytes, and its TIFF pages (if TIFF)."""

    path: Path
    kind: FileKind
    size_bytes: int
    tiff_pages: tuple[TiffPage, ...] = ()


_MAGIC = {
    b"II*\0": FileKind.TIFF, b"MM\0*": FileKind.TIFF, b"II+\0": FileKind.TIFF,  # + is BigTIFF
    b"MM\0+": FileKind.TIFF, b"\x89PNG\r\n\x1a\n": FileKind.PNG, b"\xff\xd8\xff": FileKind.JPEG,
}  # fmt: skip
# What a file's extension promises; content that does not match means the file is damaged.
_EXPECTED = {
    ".svs": "Aperio SVS (TIFF)", ".tif": "TIFF", ".tiff": "TIFF", ".ndpi": "Hamamatsu NDPI (TIFF)",
    ".scn": "Leica SCN (TIFF)", ".bif": "Ventana BIF (TIFF)", ".qptiff": "QPTIFF (TIFF)",
    ".svslide": "Sakura SVSlide (SQLite)", ".dcm": "DICOM", ".png": "PNG", ".jpg": "JPEG",
    ".jpeg": "JPEG",
}  # fmt: skip
_SUPPORTED = (
    "TIFF/BigTIFF (.svs .tif .tiff .ndpi .scn .bif .qptiff .ome.tif), DICOM (.dcm), "
    "MIRAX (.mrxs), Hamamatsu VMS (.vms .vmu), Sakura (.svslide), PNG and JPEG"
)
RECOPY = "Re-copy or re-export the slide from its source"
_TEXT_BYTES = frozenset(range(32, 127)) | {9, 10, 13}
_MAX_TAGS = 65535  # the most a classic TIFF IFD can hold; caps hostile BigTIFF entry counts
# Integer TIFF value types: SHORT, LONG, IFD, LONG8, IFD8.
_INT_TYPES = {3: "u2", 4: "u4", 13: "u4", 16: "u8", 18: "u8"}
_WANTED = frozenset({256, 257, 259, 273, 277, 278, 279, 284, 322, 323, 324, 325})
_Entry = tuple[int, int, bytes]  # (value type, value count, raw value-or-offset field)


def preflight(
    path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS, max_ifds: int = 4096
) -> PreflightResult:
    """Check that `path` is a plausible, intact slide file without decoding any pixels.

    Args:
        path: the slide file (for MIRAX/VMS, the index file: .mrxs, .vms or .vmu).
        max_pixels: largest accepted width * height of any image in the file, in pixels.
        max_ifds: largest accepted number of TIFF image file directories (pages).

    Returns:
        The detected kind, the file size in bytes and, for TIFF, each page of the main IFD chain.

    Raises:
        SlideNotFoundError: no file at `path`, it is a directory, or it cannot be opened.
        CorruptSlideError: the file is empty, its content does not match its slide extension, or
            its TIFF structure is broken (truncated, looping, inconsistent tile/strip tables).
        SlideTooLargeError: an image declares more than `max_pixels` pixels.
        UnsupportedFormatError: the file is of no format histoguard can read.
    """
    p = Path(path)
    if p.is_dir():
        index = p.with_suffix(".mrxs")
        fix = f"For MIRAX pass the index file {index}" if index.is_file() else "Check the path"
        raise SlideNotFoundError(p, "is a directory, not a slide file", fix)
    try:  # a FIFO or device would block open() or read() forever: take regular files only
        mode = p.stat().st_mode
    except OSError as e:
        raise SlideNotFoundError(p, f"cannot be opened ({e.strerror})", "Check the path") from e
    if not stat.S_ISREG(mode):
        kind = "a named pipe" if stat.S_ISFIFO(mode) else "not a regular file"
        raise SlideNotFoundError(p, f"is {kind}, not a slide file", "Give a regular slide file")
    try:
        f = p.open("rb")
    except OSError as e:
        raise SlideNotFoundError(p, f"cannot be opened ({e.strerror})", "Check the path") from e
    with f:
        size = p.stat().st_size
        if size == 0:
            raise CorruptSlideError(p, "file is empty (0 bytes)", RECOPY)
        suffix = p.suffix.lower()
        if suffix == ".mrxs":
            return PreflightResult(path=p, kind=FileKind.MIRAX, size_bytes=size)
        if suffix in (".vms", ".vmu"):
            return PreflightResult(path=p, kind=FileKind.VMS, size_bytes=size)
        head = f.read(132)  # enough for DICOM's "DICM" at byte 128
        kind = _sniff(p, head, suffix)
        pages: tuple[TiffPage, ...] = ()
        if kind is FileKind.TIFF:
            pages = _TiffWalker(f, p, size, head, max_pixels).walk(max_ifds)
        elif kind is FileKind.PNG:  # IHDR width and height follow the signature and chunk header
            width, height = struct.unpack(">II", head[16:24].ljust(8, b"\0"))
            _check_pixels(p, "the PNG header", width, height, max_pixels)
        return PreflightResult(path=p, kind=kind, size_bytes=size, tiff_pages=pages)


def _sniff(path: Path, head: bytes, suffix: str) -> FileKind:
    for magic, kind in _MAGIC.items():
        if head.startswith(magic):
            return kind
    if head[128:132] == b"DICM":
        return FileKind.DICOM
    if head.startswith(b"SQLite format 3\0") and suffix == ".svslide":
        return FileKind.SAKURA
    if suffix not in _EXPECTED:
        raise UnsupportedFormatError(
            path, "is not a recognised slide or image format", f"Supported formats: {_SUPPORTED}"
        )
    problem = f"the name says {_EXPECTED[suffix]} but the content is not (starts {head[:8]!r})"
    # Failed downloads and unfetched Git LFS files leave text where the image should be.
    if head.startswith(b"version https://git-lfs"):
        raise CorruptSlideError(path, problem + "; it is a Git LFS pointer", "Run `git lfs pull`")
    if all(b in _TEXT_BYTES for b in head):
        problem += "; it looks like text, not image data"
    raise CorruptSlideError(path, problem, RECOPY)


def _check_pixels(path: Path, what: str, width: int, height: int, max_pixels: int) -> None:
    if width == 0 or height == 0:
        raise CorruptSlideError(path, f"{what} declares no image size (a side is 0)", RECOPY)
    if width * height > max_pixels:
        raise SlideTooLargeError(
            path,
            f"{what} declares {width} x {height} pixels, over the limit of {max_pixels} pixels",
            "If the slide is genuine, raise the limit with max_pixels=",
        )


class _TiffWalker:
    """Reads a TIFF's IFD chain with bounds checks on every read."""

    def __init__(self, f: BinaryIO, path: Path, size: int, head: bytes, max_pixels: int) -> None:
        self.f, self.path, self.size, self.max_pixels = f, path, size, max_pixels
        self.bo = "<" if head.startswith(b"II") else ">"
        self.big = head[2:4] in (b"+\0", b"\0+")

    def _corrupt(self, problem: str) -> CorruptSlideError:
        return CorruptSlideError(self.path, problem, RECOPY)

    def _read(self, offset: int, n: int, what: str) -> bytes:
        # Check against the file size first so a hostile offset or count never drives a big read.
        if offset + n > self.size:
            raise self._corrupt(
                f"file is truncated: {what} needs byte {offset + n} but the file "
                f"has {self.size} bytes"
            )
        self.f.seek(offset)
        return self.f.read(n)

    def walk(self, max_ifds: int) -> tuple[TiffPage, ...]:
        if self.big:
            offset_size, zero, offset = struct.unpack(self.bo + "HHQ", self._read(4, 12, "header"))
            if (offset_size, zero) != (8, 0):
                raise self._corrupt(f"BigTIFF header declares {offset_size}-byte offsets, not 8")
        else:
            (offset,) = struct.unpack(self.bo + "I", self._read(4, 4, "header"))
        if offset == 0:
            raise self._corrupt("file has no image directories (first IFD offset is 0)")
        pages: list[TiffPage] = []
        seen: set[int] = set()
        while offset:
            if offset in seen:
                raise self._corrupt(f"directory chain loops back to offset {offset}")
            if len(pages) >= max_ifds:
                raise self._corrupt(
                    f"file has more than {max_ifds} image directories; if it is "
                    "genuine, raise the limit with max_ifds="
                )
            seen.add(offset)
            tags, offset = self._ifd(offset)
            pages.append(self._page(tags, len(pages)))
        return tuple(pages)

    def _ifd(self, offset: int) -> tuple[dict[int, _Entry], int]:
        count_fmt, entry_fmt, next_fmt = ("Q", "HHQ8s", "Q") if self.big else ("H", "HHI4s", "I")
        count_size, entry_size = struct.calcsize(count_fmt), struct.calcsize("<" + entry_fmt)
        what = f"the directory at offset {offset}"
        (n,) = struct.unpack(self.bo + count_fmt, self._read(offset, count_size, what))
        if n > _MAX_TAGS:
            raise self._corrupt(f"{what} declares {n} tags")
        block = self._read(offset + count_size, n * entry_size + (8 if self.big else 4), what)
        entries = struct.iter_unpack(self.bo + entry_fmt, block[: n * entry_size])
        tags = {tag: (typ, count, field) for tag, typ, count, field in entries if tag in _WANTED}
        (next_offset,) = struct.unpack(self.bo + next_fmt, block[n * entry_size :])
        return tags, next_offset

    def _values(self, tag: int, entry: _Entry, n: int | None = None) -> npt.NDArray[np.uint64]:
        """The first `n` (default: all) values of an integer tag."""
        typ, count, field = entry
        if typ not in _INT_TYPES:
            raise self._corrupt(f"TIFF tag {tag} has value type {typ}, not an integer type")
        dtype = np.dtype(self.bo + _INT_TYPES[typ])
        n = count if n is None else min(n, count)
        if count * dtype.itemsize <= len(field):  # small values are stored inside the entry
            data = field[: n * dtype.itemsize]
        else:
            (offset,) = struct.unpack(self.bo + ("Q" if self.big else "I"), field)
            data = self._read(offset, n * dtype.itemsize, f"TIFF tag {tag}")
        return np.frombuffer(data, dtype=dtype).astype(np.uint64)

    def _scalar(self, tags: dict[int, _Entry], tag: int, default: int) -> int:
        entry = tags.get(tag)
        return default if entry is None or entry[1] == 0 else int(self._values(tag, entry, 1)[0])

    def _page(self, tags: dict[int, _Entry], index: int) -> TiffPage:
        width, height = self._scalar(tags, 256, 0), self._scalar(tags, 257, 0)
        _check_pixels(self.path, f"page {index}", width, height, self.max_pixels)
        spp = self._scalar(tags, 277, 1)
        planes = spp if self._scalar(tags, 284, 1) == 2 else 1  # planar: one table per sample
        tiled = 322 in tags or 324 in tags
        if tiled:
            tile_w, tile_h = self._scalar(tags, 322, 0), self._scalar(tags, 323, 0)
            if tile_w == 0 or tile_h == 0:
                raise self._corrupt(f"page {index} is tiled but declares a tile size of 0")
            expected = -(-width // tile_w) * -(-height // tile_h) * planes
            offsets_tag, counts_tag, unit = 324, 325, f"{tile_w} x {tile_h} tiles"
        else:
            tile_w = tile_h = 0
            rows = self._scalar(tags, 278, height)
            if rows == 0:
                raise self._corrupt(f"page {index} declares 0 rows per strip")
            expected = -(-height // rows) * planes
            offsets_tag, counts_tag, unit = 273, 279, f"strips of {rows} rows"
        for tag in (offsets_tag, counts_tag):
            if tag not in tags or tags[tag][1] != expected:
                listed = tags[tag][1] if tag in tags else 0
                raise self._corrupt(
                    f"page {index} ({width} x {height} px in {unit}) needs {expected} entries in "
                    f"TIFF tag {tag} but the file lists {listed}"
                )
        self._check_extents(
            index,
            self._values(offsets_tag, tags[offsets_tag]),
            self._values(counts_tag, tags[counts_tag]),
        )
        return TiffPage(width=width, height=height, tiled=tiled, tile_width=tile_w,
                        tile_height=tile_h, compression=self._scalar(tags, 259, 1),
                        samples_per_pixel=spp)  # fmt: skip

    def _check_extents(
        self, index: int, offsets: npt.NDArray[np.uint64], counts: npt.NDArray[np.uint64]
    ) -> None:
        # Written so that no uint64 sum can wrap around: offset + count > size without adding.
        size = np.uint64(self.size)
        past_end = (offsets > size) | (counts > size - np.minimum(offsets, size))
        if past_end.any():
            i = int(np.argmax(past_end))
            end = int(offsets[i]) + int(counts[i])
            raise self._corrupt(
                f"file is truncated: page {index} block {i} needs byte {end} but "
                f"the file has {self.size} bytes"
            )
