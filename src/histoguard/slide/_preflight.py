"""Cheap checks on a slide file before any slide library (OpenSlide, tiffslide, Pillow) opens it.

Those libraries trust the file's header: a TIFF that claims 2**31 x 2**31 pixels, a directory chain
that loops, or a copy cut short can make them hang, allocate gigabytes or crash the process.
`preflight` sniffs the format from its magic bytes and, for TIFF, walks the image file directories
(IFDs) itself with `struct`, reading only the few tags it needs, so a hostile file is rejected with
a typed `SlideError` in milliseconds. Nothing here is sized by the declared image dimensions: the
largest read is one page's tile-offset table, which must fit inside the file.

Beyond the directory chain it refuses what no reader could decode (Compression, BitsPerSample,
SamplesPerPixel and Photometric values) and block tables no writer makes (every tile at one
offset, overlapping tiles, short uncompressed tiles), and it looks at the first bytes of three
tiles per page: data that does not start like its codec's (a lying Compression tag, offsets
shifted off the tiles) or JPEG frames of another size than the tags declare. Damage inside
single tiles is left to the tile reader, which counts and reports it.
"""

from __future__ import annotations

import enum
import stat
import struct
from collections.abc import Callable
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
    sparse_blocks: int = 0  # tiles or strips stored with offset or byte count 0 (left empty)


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
REEXPORT = "Re-export the slide as an 8-bit RGB pyramid (e.g. vips tiffsave --tile --pyramid)"
_TEXT_BYTES = frozenset(range(32, 127)) | {9, 10, 13}
_MAX_TAGS = 65535  # the most a classic TIFF IFD can hold; caps hostile BigTIFF entry counts
# Integer TIFF value types: SHORT, LONG, IFD, LONG8, IFD8.
_INT_TYPES = {3: "u2", 4: "u4", 13: "u4", 16: "u8", 18: "u8"}
_WANTED = frozenset({256, 257, 258, 259, 262, 273, 277, 278, 279, 284, 322, 323, 324, 325, 530})
# TIFF Compression codes a back-end decodes: tifffile's decoders through imagecodecs (tiffslide
# and the direct tile path), a superset of libtiff's plus Aperio JPEG 2000 (OpenSlide). Any
# other code is a codec nothing installed reads, or a damaged tag.
DECODABLE_COMPRESSIONS = frozenset(
    {1, 2, 3, 4, 5, 6, 7, 8, 22610, 32773, 32946, 33003, 33004, 33005, 33007, 34712, 34887}
    | {34892, 34925, 34926, 34927, 34933, 34934, 48124, 50000, 50001, 50002, 50013, 52546}
)
# PhotometricInterpretation codes of the TIFF 6 specification and its extensions ...
_PHOTOMETRICS = {
    0: "min-is-white", 1: "min-is-black", 2: "RGB", 3: "palette", 4: "transparency mask",
    5: "separated (CMYK)", 6: "YCbCr", 8: "CIE L*a*b*", 9: "ICC L*a*b*", 10: "ITU L*a*b*",
    32803: "CFA", 32844: "LogL", 32845: "LogLuv", 34892: "linear raw",
}  # fmt: skip
# ... and those a back-end turns into RGB pixels.
_RGB_PHOTOMETRICS = frozenset({0, 1, 2, 3, 5, 6})
_BITS_PER_SAMPLE = frozenset({1, 8, 16})  # 1: bilevel masks and labels; 16: 16-bit grey/RGB
_SAMPLES_PER_PIXEL = frozenset({1, 3, 4})  # grey, RGB or YCbCr, RGBA or CMYK
_JP2 = (b"\xff\x4f\xff\x51", b"\x00\x00\x00\x0cjP  ")  # JPEG 2000 codestream, JP2 file


def _lzw(start: bytes) -> bool:
    return start[:1] == b"\x80" or (len(start) >= 2 and start[0] == 0 and start[1] & 1 == 1)


def _zlib(start: bytes) -> bool:
    return len(start) >= 2 and start[0] & 0x0F == 8 and (start[0] << 8 | start[1]) % 31 == 0


# How the data of a block starts, per compression with a fixed signature (RFC 1950 for zlib;
# TIFF LZW always begins with the 9-bit clear code 256: byte 0x80, or 0x00 then an odd byte in
# the old bit-reversed variant libtiff still reads). Old-style JPEG (6) has none: its tables
# and data may lie anywhere.
_SIGNATURES: dict[int, Callable[[bytes], bool]] = {
    5: _lzw,
    7: lambda b: b.startswith(b"\xff\xd8"),
    8: _zlib,
    32946: _zlib,
    33003: lambda b: b.startswith(_JP2),
    33005: lambda b: b.startswith(_JP2),
    34712: lambda b: b.startswith(_JP2),
    34933: lambda b: b.startswith(b"\x89PNG"),
    50000: lambda b: b.startswith(b"\x28\xb5\x2f\xfd"),
    50001: lambda b: b.startswith(b"RIFF") and b[8:12] == b"WEBP",
}
_CODEC_NAMES = {
    5: "LZW", 7: "JPEG", 8: "deflate", 32946: "deflate",
    33003: "Aperio JPEG 2000", 33005: "Aperio JPEG 2000", 34712: "JPEG 2000", 34933: "PNG",
    50000: "Zstandard", 50001: "WebP",
}  # fmt: skip
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # JPEG start-of-frame
# A JPEG tile's start-of-frame header follows its SOI and any tables: well inside this. (Not
# more: a hostile file may repeat a page thousands of times, each probe reads this much.)
_JPEG_PROBE_BYTES = 4096

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

    def _unsupported(self, problem: str) -> UnsupportedFormatError:
        return UnsupportedFormatError(self.path, problem, REEXPORT)

    def _page(self, tags: dict[int, _Entry], index: int) -> TiffPage:
        width, height = self._scalar(tags, 256, 0), self._scalar(tags, 257, 0)
        _check_pixels(self.path, f"page {index}", width, height, self.max_pixels)
        spp, compression = self._scalar(tags, 277, 1), self._scalar(tags, 259, 1)
        bits = self._bits_per_sample(tags, index, spp)
        photometric = self._check_codec(tags, index, spp, compression)
        if compression in (2, 3, 4) and bits != 1:  # CCITT fax codes hold bilevel images only
            raise self._corrupt(
                f"page {index} declares CCITT fax compression ({compression}) for {bits}-bit "
                "samples; fax codes hold 1-bit images only"
            )
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
        offsets = self._values(offsets_tag, tags[offsets_tag])
        counts = self._values(counts_tag, tags[counts_tag])
        self._check_extents(index, offsets, counts)
        sparse = (offsets == 0) | (counts == 0)  # OpenSlide and libtiff: a block left empty
        if sparse.all():
            raise self._corrupt(
                f"page {index} holds no image data: all {len(sparse)} of its {unit} have "
                "offset or byte count 0"
            )
        self._check_layout(index, offsets[~sparse], counts[~sparse], unit)
        if tiled and compression == 1:
            needed = -(-tile_w * (spp // planes) * bits // 8) * tile_h
            if photometric == 6 and planes == 1:  # YCbCr: h x v luma + 2 chroma per block
                h, v = self._subsampling(tags)
                needed = -(-tile_w // h) * -(-tile_h // v) * (h * v + 2) * bits // 8
            self._check_raw_counts(index, counts[~sparse], needed, unit)
        page = TiffPage(width=width, height=height, tiled=tiled, tile_width=tile_w,
                        tile_height=tile_h, compression=compression, samples_per_pixel=spp,
                        sparse_blocks=int(sparse.sum()))  # fmt: skip
        self._check_blocks(index, offsets[~sparse], counts[~sparse], page, bits)
        return page

    def _subsampling(self, tags: dict[int, _Entry]) -> tuple[int, int]:
        """YCbCrSubSampling ``(horizontal, vertical)``, each 1, 2 or 4; the TIFF default is 2, 2."""
        listed = [int(x) for x in self._values(530, tags[530], 2)] if 530 in tags else []
        h, v = (*listed, 2, 2)[:2]
        if h not in (1, 2, 4) or v not in (1, 2, 4):
            raise self._corrupt(f"YCbCrSubSampling is {h} x {v}; TIFF allows 1, 2 or 4 each")
        return h, v

    def _bits_per_sample(self, tags: dict[int, _Entry], index: int, spp: int) -> int:
        """The page's bits per sample, refused unless every sample has the same, usable depth."""
        if spp == 0:
            raise self._corrupt(f"page {index} declares 0 samples per pixel")
        if spp not in _SAMPLES_PER_PIXEL:
            raise self._unsupported(
                f"page {index} has {spp} samples per pixel; slide readers take 1 (grey), "
                "3 (RGB) or 4 (RGBA)"
            )
        entry = tags.get(258)
        if entry is None or entry[1] == 0:
            return 1  # the TIFF default
        if entry[1] not in (1, spp):
            raise self._corrupt(
                f"page {index} lists {entry[1]} BitsPerSample values for {spp} samples per pixel"
            )
        depths = {int(v) for v in self._values(258, entry)}
        if len(depths) > 1 or not depths <= _BITS_PER_SAMPLE or (1 in depths and spp != 1):
            listed = "/".join(str(d) for d in sorted(depths))
            raise self._unsupported(
                f"page {index} has {listed} bits per sample with {spp} samples per pixel; "
                "slide readers take 8 bits (or 16, or 1 for a bilevel image)"
            )
        return depths.pop()

    def _check_codec(
        self, tags: dict[int, _Entry], index: int, spp: int, compression: int
    ) -> int | None:
        """Refuse a compression no installed decoder reads, or a colour model that gives no RGB.

        Returns:
            The page's PhotometricInterpretation, None when the tag is absent.
        """
        if compression not in DECODABLE_COMPRESSIONS:
            raise self._unsupported(
                f"page {index} uses TIFF compression {compression}, which no installed decoder "
                "reads (an unknown codec or a damaged Compression tag)"
            )
        if 262 not in tags or tags[262][1] == 0:
            return None  # readers infer it from the samples per pixel
        photometric = self._scalar(tags, 262, 0)
        if photometric not in _PHOTOMETRICS:
            raise self._corrupt(
                f"page {index} declares PhotometricInterpretation {photometric}, "
                "which no TIFF specification defines"
            )
        name = _PHOTOMETRICS[photometric]
        if photometric not in _RGB_PHOTOMETRICS:
            raise self._unsupported(
                f"page {index} stores {name} pixels (PhotometricInterpretation {photometric}), "
                "which slide readers do not turn into RGB"
            )
        if (
            (photometric in (2, 6) and spp < 3)
            or (photometric in (0, 1, 3) and spp > 1)
            or (photometric == 5 and spp < 4)
        ):
            raise self._corrupt(f"page {index} declares {name} pixels with {spp} samples per pixel")
        return photometric

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

    def _check_layout(
        self, index: int, offsets: npt.NDArray[np.uint64], counts: npt.NDArray[np.uint64], unit: str
    ) -> None:
        """Refuse block tables no writer makes: blocks inside the header, every block at one
        offset, or blocks that partly overlap. Identical (offset, count) pairs are allowed:
        some writers store one blank tile once and point every empty tile at it."""
        header = 16 if self.big else 8
        if int(offsets.min()) < header:
            raise self._corrupt(
                f"page {index}: a block starts at byte {int(offsets.min())}, inside the "
                f"{header}-byte TIFF header"
            )
        if len(offsets) > 1 and (offsets == offsets[0]).all():
            raise self._corrupt(
                f"page {index}: all {len(offsets)} of its {unit} point at the same data "
                f"(offset {int(offsets[0])}); its offset table is damaged"
            )
        pairs = np.unique(np.stack([offsets, counts], axis=1), axis=0)  # sorted by offset
        ends = pairs[:-1, 0] + pairs[:-1, 1]  # each below the file size: no wrap-around
        overlap = pairs[1:, 0] < ends
        if overlap.any():
            i = int(np.argmax(overlap))
            raise self._corrupt(
                f"page {index}: the block at byte {int(pairs[i + 1, 0])} starts inside the one "
                f"at byte {int(pairs[i, 0])} ({int(pairs[i, 1])} bytes long); its offset or "
                "byte-count table is damaged"
            )

    def _check_raw_counts(
        self, index: int, counts: npt.NDArray[np.uint64], needed: int, unit: str
    ) -> None:
        short = counts < np.uint64(needed)
        if short.any():
            raise self._corrupt(
                f"page {index} is uncompressed but a block of its {unit} holds "
                f"{int(counts[np.argmax(short)])} bytes, not the {needed} one tile needs"
            )

    def _check_blocks(
        self,
        index: int,
        offsets: npt.NDArray[np.uint64],
        counts: npt.NDArray[np.uint64],
        page: TiffPage,
        bits: int,
    ) -> None:
        """Look inside a few blocks: each must start the way its compression's data starts and,
        for JPEG tiles, hold a frame of the declared tile size.

        A Compression tag that lies, offsets shifted off the block starts or TileWidth/
        TileLength tags that lie all show in every block; one damaged block does not. So two
        disagreeing samples out of three (or the only block) are needed: a single bad tile is
        the reader's to detect and report, not a reason to refuse the slide.
        """
        check = _SIGNATURES.get(page.compression)
        if check is None:
            return
        picks = sorted({0, len(offsets) // 2, len(offsets) - 1})
        needed = min(2, len(picks))
        starts = [self._read(int(offsets[i]), min(int(counts[i]), 16), "a block") for i in picks]
        wrong = [start for start in starts if not check(start)]
        if len(wrong) >= needed:
            raise self._corrupt(
                f"page {index} declares {_CODEC_NAMES[page.compression]} compression but "
                f"{len(wrong)} of {len(picks)} sampled blocks do not start like it (one starts "
                f"{wrong[0][:8]!r}); its Compression tag or block offsets are damaged"
            )
        if page.compression != 7 or not page.tiled:
            return
        frames = [self._jpeg_frame(int(offsets[i]), int(counts[i])) for i in picks]
        declared = (page.tile_width, page.tile_height, bits)
        wrong_frames = [f for f in frames if f is not None and f != declared]
        if len(wrong_frames) >= needed:
            w, h, precision = wrong_frames[0]
            raise self._corrupt(
                f"page {index} declares {declared[0]} x {declared[1]} tiles of {bits}-bit "
                f"samples but its JPEG tiles hold {w} x {h} pixels of {precision} bits; its "
                "TileWidth, TileLength or BitsPerSample tags are damaged"
            )

    def _jpeg_frame(self, offset: int, count: int) -> tuple[int, int, int] | None:
        """``(width, height, bits per sample)`` from the start-of-frame header of the JPEG at
        ``offset``, or None when the stream has none in its first bytes (a damaged tile)."""
        data = self._read(offset, min(count, _JPEG_PROBE_BYTES), "a JPEG tile")
        i = 2 if data.startswith(b"\xff\xd8") else len(data)
        while i + 9 <= len(data) and data[i] == 0xFF:
            marker, length = data[i + 1], int.from_bytes(data[i + 2 : i + 4], "big")
            if marker in _SOF_MARKERS:
                precision, height, width = struct.unpack(">BHH", data[i + 4 : i + 9])
                return width, height, precision
            i += 2 + length
        return None
