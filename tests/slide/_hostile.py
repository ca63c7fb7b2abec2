"""A corpus of hostile slide files, made at test time from small valid pyramids by byte surgery.

Issue 15: of 611 hostile variants of real slides, ``histoguard info`` accepted 285 and hung on
one. :func:`make_corpus` rebuilds those classes (truncations, zero-filled regions, bit flips,
damaged tile offset and byte-count tables, lying tile sizes and unusable Compression,
BitsPerSample, SamplesPerPixel and Photometric tags) from generated pyramids and, when given, a
real slide. Run as ``python -m tests.slide._hostile LIST OUT`` it opens every file of LIST (one
path a line) as ``histoguard info`` does and writes one JSON line per file to OUT as soon as
that file is done, so a hang names its file: the last line written is the one before it.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from histoguard.slide import write_synthetic_slide
from tests.slide.tiff_surgery import rewrite_values

#: The generated base slides: (name, compression, level-0 width, height, tile side).
BASES = (
    ("jpeg", "jpeg", 1024, 768, 128),
    ("raw", "none", 512, 384, 64),
    ("zlib", "zlib", 768, 512, 128),
)


@dataclass(frozen=True)
class Variant:
    """One hostile file: its class (``truncate``, ``bitflip``, ...) and what was done."""

    path: Path
    kind: str
    detail: str


Surgery = Callable[[bytearray, tifffile.TiffFile], None]


#: Damage the preflight must always refuse (a typed error, before any reader runs), as
#: (class, detail suffix) with "" for every detail. What is left (bit flips and zero-filled
#: regions in pixel data, sparse tiles, tile tables that still fit together, codes that a reader
#: decodes into wrong pixels) may open, and is then up to the tile reader to flag.
MUST_REFUSE = {
    "truncate": ("",), "samplesperpixel": ("",), "imagesize": ("",), "tilelength": ("",),
    "bitspersample": ("0", "1", "4", "7", "12", "32", "255"),
    "compression": ("0", "1", "2", "7", "8", "99", "33005", "34712", "50000", "65535"),
    "photometric": ("0", "1", "3", "4", "5", "8", "99", "32844", "65535"),
    "tilewidth": ("double", "half", "zero", "one", "huge"),
    "offsets": ("zero", "one-tile", "one-tile-last", "past-end"),
    "counts": ("zeroed", "huge", "plus1", "doubled", "all-one"),
}  # fmt: skip


def must_refuse(variant: Variant) -> bool:
    """Whether ``variant`` is damage the preflight is expected to refuse."""
    details = MUST_REFUSE.get(variant.kind, ())
    return "" in details or re.sub(r"^L\d+-", "", variant.detail) in details


def make_bases(folder: Path) -> list[Path]:
    """The valid base pyramids (two levels, 0.5 µm/px, tissue in the middle)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (name, codec, w, h, tile) in enumerate(BASES):
        path = folder / f"{name}.tiff"
        write_synthetic_slide(
            path, width=w, height=h, mpp=0.5, levels=2, tile=tile, compression=codec, seed=i
        )
        paths.append(path)
    return paths


def make_corpus(
    folder: Path, bases: list[Path], real: Path | None = None, real_every: int = 4
) -> list[Variant]:
    """Write every hostile variant of ``bases`` into ``folder``, and every ``real_every``-th
    variant of ``real`` (if given: a real slide is larger and slower to tile)."""
    folder.mkdir(parents=True, exist_ok=True)
    variants: list[Variant] = []
    sources = [(base, 1) for base in bases] + ([(real, real_every)] if real is not None else [])
    for source, every in sources:
        data = source.read_bytes()
        with tifffile.TiffFile(source) as tif:
            surgeries = list(_surgeries(tif, len(data), seed=len(variants)))
            for kind, detail, surgery in surgeries[::every]:
                out = bytearray(data)
                surgery(out, tif)
                name = f"{source.stem}-{kind}-{detail}".replace(" ", "_").replace("/", "_")
                path = folder / f"{name}{source.suffix}"
                path.write_bytes(bytes(out))
                variants.append(Variant(path=path, kind=kind, detail=detail))
    return variants


def _surgeries(tif: tifffile.TiffFile, size: int, seed: int) -> Iterator[tuple[str, str, Surgery]]:
    """Every (class, detail, surgery) for one source file; the surgery edits a byte copy."""
    pages = [tif.pages[i] for i in range(len(tif.pages))]
    data_start = min(int(pages[0].dataoffsets[0]), size // 2)
    # Truncations: a few bytes, a few hundred kB, and fractions of the file.
    cuts = {size - n for n in (1, 7, 100, 4096) if n < size}
    cuts |= {size - n for n in (100_000, 300_000) if n < size // 2}
    cuts |= {int(size * f) for f in (0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99)} | {4, 8, 100}
    for cut in sorted(cuts):
        yield "truncate", f"{cut}B", _truncate(cut)
    # Zero-filled regions, the directories left intact (they sit at the start for tifffile).
    for start_frac, length in ((0.1, 512), (0.3, 4096), (0.5, 65536), (0.8, 1000), (0.2, 10**6)):
        start = data_start + int((size - data_start) * start_frac)
        yield "zeros", f"{start}+{length}", _fill(start, min(length, size - start))
    yield "zeros", "all-data", _fill(data_start, size - data_start)
    # Random bit flips, seeded: 1 to 1,000 of them, anywhere or in the directory area only.
    for n in (1, 2, 5, 10, 30, 100, 300, 1000):
        for where in ("any", "head"):
            top = data_start if where == "head" else size
            yield "bitflip", f"{n}-{where}", _flips(n, top, seed=seed + n + (where == "head"))
    # Damaged tile tables, on level 0 and on the last page.
    for level in sorted({0, len(pages) - 1}):
        page = pages[level]
        if not page.is_tiled:
            continue
        offsets, counts = page.tags["TileOffsets"], page.tags["TileByteCounts"]
        n = len(page.dataoffsets)
        table: dict[str, Callable[[np.ndarray], np.ndarray]] = {
            "zero": np.zeros_like,
            "one-tile": lambda a: np.full_like(a, a[0]),
            "one-tile-last": lambda a: np.full_like(a, a[-1]),
            "shift7": lambda a: a + 7,
            "shift-7": lambda a: a - 7,
            "shuffled": lambda a: np.random.default_rng(seed).permutation(a),
            "reversed": lambda a: a[::-1].copy(),
            "swap2": lambda a: a[[1, 0, *range(2, len(a))]],
            "first-zero": lambda a: np.concatenate([[0], a[1:]]).astype(a.dtype),
            "past-end": lambda a: np.concatenate([a[:-1], [size + 10]]).astype(a.dtype),
        }
        for name, change in table.items():
            yield "offsets", f"L{level}-{name}", _rewrite(offsets, change)
        sizes: dict[str, Callable[[np.ndarray], np.ndarray]] = {
            "halved": lambda a: a // 2,
            "zeroed": np.zeros_like,
            "one-zero": lambda a: np.concatenate([a[:-1], [0]]).astype(a.dtype),
            "some-zero": lambda a: np.where(np.arange(len(a)) % 3 == 0, 0, a).astype(a.dtype),
            "plus1": lambda a: a + 1,
            "doubled": lambda a: a * 2,
            "all-one": np.ones_like,
            "huge": lambda a: np.full_like(a, 2**31),
        }
        for name, change in sizes.items():
            yield "counts", f"L{level}-{name}", _rewrite(counts, change)
        if n > 1:  # a sparse tile: offset and count both 0, as OpenSlide writes an empty tile
            yield "sparse", f"L{level}-one", _rewrite_both(page, [n // 2])
            yield "sparse", f"L{level}-half", _rewrite_both(page, list(range(0, n, 2)))
        side = page.tilewidth
        lies = {"double": side * 2, "half": side // 2, "plus16": side + 16, "zero": 0, "one": 1}
        for name, value in {**lies, "huge": 2**31}.items():
            yield "tilewidth", f"L{level}-{name}", _set_tag(page.tags["TileWidth"], value)
        taller = _set_tag(page.tags["TileLength"], page.tilelength * 2)
        yield "tilelength", f"L{level}-double", taller
    # Unusable or wrong codec and pixel-format tags, on level 0.
    page = pages[0]
    for value in (0, 2, 6, 8, 99, 34712, 33005, 50000, 65535, 1 if page.compression != 1 else 7):
        if value != page.compression:
            yield "compression", str(value), _set_tag(page.tags["Compression"], value)
    for value in (0, 1, 4, 7, 12, 16, 32, 255):
        yield "bitspersample", str(value), _set_tag(page.tags["BitsPerSample"], value)
    for value in (0, 1, 2, 4, 5, 255):
        yield "samplesperpixel", str(value), _set_tag(page.tags["SamplesPerPixel"], value)
    for value in (0, 1, 3, 4, 5, 8, 99, 32844, 65535, 2 if page.photometric != 2 else 6):
        if value != page.photometric:
            tag = page.tags["PhotometricInterpretation"]
            yield "photometric", str(value), _set_tag(tag, value)
    for name, (w, h) in (("wider", (page.imagewidth * 2, page.imagelength)), ("zero", (0, 0))):
        yield "imagesize", name, _set_size(page, w, h)


def _truncate(cut: int) -> Surgery:
    def surgery(out: bytearray, tif: tifffile.TiffFile) -> None:
        del out[cut:]

    return surgery


def _fill(start: int, length: int) -> Surgery:
    def surgery(out: bytearray, tif: tifffile.TiffFile) -> None:
        out[start : start + length] = bytes(length)

    return surgery


def _flips(n: int, top: int, seed: int) -> Surgery:
    def surgery(out: bytearray, tif: tifffile.TiffFile) -> None:
        rng = np.random.default_rng(seed)
        for position, bit in zip(rng.integers(0, top, n), rng.integers(0, 8, n), strict=True):
            out[int(position)] ^= 1 << int(bit)

    return surgery


def _rewrite(tag: tifffile.TiffTag, change: Callable[[np.ndarray], np.ndarray]) -> Surgery:
    def surgery(out: bytearray, tif: tifffile.TiffFile) -> None:
        rewrite_values(out, tag, change)

    return surgery


def _rewrite_both(page: tifffile.TiffPage, tiles: list[int]) -> Surgery:
    def zero(a: np.ndarray) -> np.ndarray:
        a = a.copy()
        a[tiles] = 0
        return a

    offsets = _rewrite(page.tags["TileOffsets"], zero)
    counts = _rewrite(page.tags["TileByteCounts"], zero)

    def surgery(out: bytearray, tif: tifffile.TiffFile) -> None:
        offsets(out, tif)
        counts(out, tif)

    return surgery


def _set_tag(tag: tifffile.TiffTag, value: int) -> Surgery:
    """Set every value of an integer tag (SHORT values are clipped to 65535)."""
    return _rewrite(tag, lambda a: np.full_like(a, value))


def _set_size(page: tifffile.TiffPage, width: int, height: int) -> Surgery:
    w, h = _set_tag(page.tags["ImageWidth"], width), _set_tag(page.tags["ImageLength"], height)

    def surgery(out: bytearray, tif: tifffile.TiffFile) -> None:
        w(out, tif)
        h(out, tif)

    return surgery


def open_all(paths: list[Path], out: Path) -> None:
    """Open each slide as ``histoguard info`` does; one JSON line per file, flushed at once.

    Each line: ``path``, ``outcome`` (``ok``, ``typed`` for a HistoguardError, ``untyped``
    for anything else), ``error`` (exception class) and ``message``; for opened files also
    ``sparse_tiles`` as info reports it.
    """
    from histoguard.errors import HistoguardError
    from histoguard.slide import slide_info

    with out.open("w") as log:
        for path in paths:
            try:
                facts = slide_info(path, mpp_override=0.5)
                line = {"path": str(path), "outcome": "ok", "error": "", "message": "",
                        "sparse_tiles": facts["sparse_tiles"]}  # fmt: skip
            except HistoguardError as error:
                line = {"path": str(path), "outcome": "typed", "error": type(error).__name__,
                        "message": str(error)}  # fmt: skip
            except Exception as error:  # what the corpus is here to find
                line = {"path": str(path), "outcome": "untyped", "error": type(error).__name__,
                        "message": str(error)}  # fmt: skip
            log.write(json.dumps(line) + "\n")
            log.flush()


#: The tiling settings of the batch: 128 px tiles read from level 0, a small thumbnail. The
#: override (1 µm/px, not the 0.5 stored) makes the small bases big enough to hold tissue.
TILING = {"mpp": 1.0, "tile_size": 128, "mpp_override": 1.0, "thumbnail_size": 256}


def tile_all(paths: list[Path], out_dir: Path) -> None:
    """Tile all slides as one batch (``histoguard tile``); its summary table is the outcome."""
    from histoguard import tile_slides
    from histoguard.slide import TilingConfig

    tile_slides(paths, out_dir, TilingConfig(**TILING))


if __name__ == "__main__":
    command, listing, target = sys.argv[1:4]
    paths = [Path(p) for p in Path(listing).read_text().split("\n") if p]
    {"info": open_all, "tile": tile_all}[command](paths, Path(target))
