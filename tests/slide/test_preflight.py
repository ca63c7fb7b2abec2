"""Preflight must reject hostile or broken files with a typed error, fast, and pass real slides."""

from __future__ import annotations

import io
import os
import struct
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from histoguard.errors import (
    CorruptSlideError,
    SlideError,
    SlideNotFoundError,
    SlideTooLargeError,
    UnsupportedFormatError,
)
from histoguard.slide import slide_info
from histoguard.slide._preflight import (
    DECODABLE_COMPRESSIONS,
    DEFAULT_MAX_PIXELS,
    FileKind,
    PreflightResult,
    TiffPage,
    preflight,
)
from histoguard.slide._synthetic import Rectangle, synthetic_tissue
from tests.slide.tiff_surgery import (
    RGB,
    corrupt_tiles,
    ifd_offset,
    next_ifd_pointer,
    patch,
    patch_long,
    rewrite_file_values,
    write_tiff,
)


def _raises(kind: type[SlideError], path: Path, **kwargs: int) -> str:
    """Run preflight expecting exactly `kind`, with the file named in the message.

    How fast it gives up is measured by benchmarks/bench_preflight.py, not asserted here.
    """
    with pytest.raises(SlideError) as info:
        preflight(path, **kwargs)
    assert type(info.value) is kind, info.value
    message = str(info.value)
    assert path.name in message
    return message


# --- not a slide file at all ------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    message = _raises(SlideNotFoundError, tmp_path / "nope.svs")
    assert "Check the path" in message


def test_directory(tmp_path: Path) -> None:
    (tmp_path / "slide").mkdir()
    (tmp_path / "slide.mrxs").write_text("[GENERAL]\n")
    message = _raises(SlideNotFoundError, tmp_path / "slide")
    assert "slide.mrxs" in message  # points at the MIRAX index beside its data folder


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.svs"
    path.touch()
    message = _raises(CorruptSlideError, path)
    assert "empty (0 bytes)" in message
    assert "Re-copy or re-export" in message


def test_text_named_svs(tmp_path: Path) -> None:
    path = tmp_path / "slide.svs"
    path.write_text("<html><body>403 Forbidden</body></html>\n")
    message = _raises(CorruptSlideError, path)
    assert "Aperio SVS" in message
    assert "b'<html><b'" in message
    assert "looks like text" in message


def test_git_lfs_pointer(tmp_path: Path) -> None:
    path = tmp_path / "slide.ndpi"
    path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 9\n")
    assert "git lfs pull" in _raises(CorruptSlideError, path)


def test_unknown_content_and_extension(tmp_path: Path) -> None:
    path = tmp_path / "data.xyz"
    path.write_bytes(b"\x00\x01\x02\x03" * 64)
    message = _raises(UnsupportedFormatError, path)
    assert "TIFF" in message
    assert "DICOM" in message


@pytest.mark.parametrize(
    ("name", "content", "kind"),
    [
        ("slide.mrxs", b"[GENERAL]\n", FileKind.MIRAX),
        ("slide.vms", b"[Virtual Microscope Specimen]\n", FileKind.VMS),
        ("slide.vmu", b"[Uncompressed Virtual Microscope Specimen]\n", FileKind.VMS),
        ("x.dcm", bytes(128) + b"DICM" + bytes(16), FileKind.DICOM),
        ("x.jpg", b"\xff\xd8\xff\xe0" + bytes(16), FileKind.JPEG),
        ("x.svslide", b"SQLite format 3\0" + bytes(84), FileKind.SAKURA),
        ("no_extension", b"\xff\xd8\xff\xe0" + bytes(16), FileKind.JPEG),  # content wins
    ],
)
def test_other_kinds_are_sniffed(tmp_path: Path, name: str, content: bytes, kind: FileKind) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    result = preflight(path)
    assert result == PreflightResult(path=path, kind=kind, size_bytes=len(content))


def test_png_dimensions_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    ihdr = struct.pack(">I4sIIBBBBB", 13, b"IHDR", 2**31, 2**31, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + ihdr + bytes(4))
    assert "max_pixels=" in _raises(SlideTooLargeError, path)


# --- valid TIFFs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "page"),
    [
        ({}, TiffPage(width=256, height=192, tiled=True, tile_width=64, tile_height=64,
                      compression=1, samples_per_pixel=3)),
        ({"byteorder": ">"}, TiffPage(width=256, height=192, tiled=True, tile_width=64,
                                      tile_height=64, compression=1, samples_per_pixel=3)),
        ({"bigtiff": True}, TiffPage(width=256, height=192, tiled=True, tile_width=64,
                                     tile_height=64, compression=1, samples_per_pixel=3)),
        ({"bigtiff": True, "byteorder": ">", "compression": "zlib"},
         TiffPage(width=256, height=192, tiled=True, tile_width=64, tile_height=64,
                  compression=8, samples_per_pixel=3)),
        ({"tile": None, "rowsperstrip": 50}, TiffPage(width=256, height=192, tiled=False,
                                                      tile_width=0, tile_height=0, compression=1,
                                                      samples_per_pixel=3)),
        # Separate planes: one tile table per sample, so 3 x 12 tiles.
        ({"data": np.zeros((3, 192, 256), np.uint8), "planarconfig": "separate"},
         TiffPage(width=256, height=192, tiled=True, tile_width=64, tile_height=64,
                  compression=1, samples_per_pixel=3)),
        ({"data": np.zeros((100, 70), np.uint16), "photometric": "minisblack", "tile": (16, 32)},
         TiffPage(width=70, height=100, tiled=True, tile_width=32, tile_height=16,
                  compression=1, samples_per_pixel=1)),
    ],
)  # fmt: skip
def test_valid_tiff_passes(tmp_path: Path, kwargs: dict[str, Any], page: TiffPage) -> None:
    path = write_tiff(tmp_path / "ok.tif", pages=2, **kwargs)
    result = preflight(path)
    assert result.kind is FileKind.TIFF
    assert result.size_bytes == path.stat().st_size
    assert result.tiff_pages == (page, page)


def test_str_path_accepted(tmp_path: Path) -> None:
    path = write_tiff(tmp_path / "ok.tif")
    assert preflight(str(path)).path == path


# --- hostile TIFFs ------------------------------------------------------------------------------


def test_huge_declared_size(tmp_path: Path) -> None:
    path = write_tiff(tmp_path / "huge.svs")
    patch_long(path, 0, 256, 2**31)
    patch_long(path, 0, 257, 2**31)
    message = _raises(SlideTooLargeError, path)
    assert "2147483648 x 2147483648" in message
    assert str(DEFAULT_MAX_PIXELS) in message
    assert "max_pixels=" in message


def test_max_pixels_is_configurable(tmp_path: Path) -> None:
    path = write_tiff(tmp_path / "ok.tif")
    _raises(SlideTooLargeError, path, max_pixels=256 * 192 - 1)
    assert preflight(path, max_pixels=256 * 192).tiff_pages[0].width == 256


def test_size_inconsistent_with_tile_count(tmp_path: Path) -> None:
    path = write_tiff(tmp_path / "liar.svs")
    patch_long(path, 0, 256, 4096)  # within the limit, but 64 x 3 tiles, not the 4 x 3 written
    message = _raises(CorruptSlideError, path)
    assert "needs 192 entries" in message
    assert "lists 12" in message


def test_zero_width(tmp_path: Path) -> None:
    path = write_tiff(tmp_path / "zero.tif")
    patch_long(path, 0, 256, 0)
    assert "no image size" in _raises(CorruptSlideError, path)


def test_no_directories(tmp_path: Path) -> None:
    path = tmp_path / "bare.tif"
    path.write_bytes(b"II*\0" + bytes(4) + bytes(64))
    assert "no image directories" in _raises(CorruptSlideError, path)


def test_ifd_loops_to_itself(tmp_path: Path) -> None:
    path = write_tiff(tmp_path / "loop.svs")
    patch(path, next_ifd_pointer(path, 0), struct.pack("<I", ifd_offset(path, 0)))
    message = _raises(CorruptSlideError, path)
    assert f"loops back to offset {ifd_offset(path, 0)}" in message


def test_ifd_loops_via_two_pages(tmp_path: Path) -> None:
    path = write_tiff(tmp_path / "loop2.svs", pages=2)
    patch(path, next_ifd_pointer(path, 1), struct.pack("<I", ifd_offset(path, 0)))
    assert f"loops back to offset {ifd_offset(path, 0)}" in _raises(CorruptSlideError, path)


def test_too_many_ifds(tmp_path: Path) -> None:
    path = write_tiff(tmp_path / "many.tif", pages=3)
    assert "max_ifds=" in _raises(CorruptSlideError, path, max_ifds=2)
    assert len(preflight(path, max_ifds=3).tiff_pages) == 3


def test_ifd_past_end_of_file(tmp_path: Path) -> None:
    path = write_tiff(tmp_path / "dangling.tif")
    size = path.stat().st_size
    patch(path, 4, struct.pack("<I", size + 1000))
    assert f"but the file has {size} bytes" in _raises(CorruptSlideError, path)


def test_truncated_to_half(tmp_path: Path) -> None:
    path = write_tiff(tmp_path / "half.svs")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    message = _raises(CorruptSlideError, path)
    assert "file is truncated" in message
    assert f"the file has {len(data) // 2} bytes" in message


def test_tile_offset_past_end(tmp_path: Path) -> None:
    path = write_tiff(tmp_path / "tile.tif")
    with tifffile.TiffFile(path) as tif:
        table = tif.pages[0].tags[324].valueoffset
    patch(path, table + 4 * 5, struct.pack("<I", 2**32 - 1))  # tile 5 points at byte ~4 GiB
    assert "block 5 needs byte" in _raises(CorruptSlideError, path)


def test_bigtiff_huge_tag_count(tmp_path: Path) -> None:
    path = write_tiff(tmp_path / "tags.tif", bigtiff=True)
    patch(path, ifd_offset(path, 0), struct.pack("<Q", 2**40))
    assert "declares 1099511627776 tags" in _raises(CorruptSlideError, path)


# --- tag values no reader decodes, and block tables no writer makes (issue 15) ---------------

# An H&E-like image, so compressed tiles differ from each other (zeros would compress alike).
TEXTURE = synthetic_tissue(256, 192, [Rectangle(x0=0, y0=0, x1=256, y1=192)])


@pytest.mark.parametrize(
    ("code", "value", "kind", "said"),
    [
        (259, 52479, UnsupportedFormatError, "compression 52479, which no installed decoder"),
        (259, 2, CorruptSlideError, "CCITT fax compression (2) for 8-bit samples"),
        (277, 0, CorruptSlideError, "declares 0 samples per pixel"),
        (277, 2, UnsupportedFormatError, "has 2 samples per pixel"),
        (258, 7, UnsupportedFormatError, "has 7 bits per sample"),
        (258, 0, UnsupportedFormatError, "has 0 bits per sample"),
        (262, 99, CorruptSlideError, "PhotometricInterpretation 99, which no TIFF"),
        (262, 4, UnsupportedFormatError, "stores transparency mask pixels"),
        (262, 1, CorruptSlideError, "declares min-is-black pixels with 3 samples per pixel"),
        (262, 5, CorruptSlideError, "declares separated (CMYK) pixels with 3 samples"),
    ],
)
def test_unusable_tag_values(
    tmp_path: Path, code: int, value: int, kind: type[SlideError], said: str
) -> None:
    path = write_tiff(tmp_path / "tags.svs")
    patch_long(path, 0, code, value)
    message = _raises(kind, path)
    assert said in message
    assert "Re-" in message  # says what to do


@pytest.mark.parametrize(
    "kwargs",
    [
        {"compression": "zlib"}, {"compression": "lzw"}, {"compression": "jpeg"},
        {"compression": "jpeg2000"}, {"compression": "zstd"}, {"compression": "png"},
        {"compression": "webp"}, {"compression": "packbits"}, {"data": TEXTURE.astype(np.uint16)},
        {"data": TEXTURE[..., 0], "photometric": "minisblack", "compression": "zlib"},
        {"data": TEXTURE[..., 0] > 128, "photometric": "minisblack", "tile": None},
    ],
    ids=["zlib", "lzw", "jpeg", "jpeg2000", "zstd", "png", "webp", "packbits", "16-bit", "grey",
         "bilevel"],
)  # fmt: skip
def test_decodable_codecs_and_depths_pass(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    # Each block starts as its codec's data does: the signature checks accept real encoders.
    path = write_tiff(tmp_path / "ok.tif", **{"data": TEXTURE, **kwargs})
    assert preflight(path).tiff_pages[0].width == 256


def test_sparse_tiles_are_counted_not_refused(tmp_path: Path) -> None:
    path = write_tiff(tmp_path / "sparse.tif")
    for code in (324, 325):  # offset and byte count 0: a tile left empty, as OpenSlide reads it
        rewrite_file_values(path, 0, code, lambda a: np.where(np.arange(len(a)) == 5, 0, a))
    assert preflight(path).tiff_pages[0].sparse_blocks == 1
    for code in (324, 325):
        rewrite_file_values(path, 0, code, np.zeros_like)
    assert "holds no image data: all 12 of its 64 x 64 tiles" in _raises(CorruptSlideError, path)


def test_every_tile_at_one_offset(tmp_path: Path) -> None:
    path = write_tiff(tmp_path / "one.tif")
    rewrite_file_values(path, 0, 324, lambda a: np.full_like(a, a[3]))
    assert "all 12 of its 64 x 64 tiles point at the same data" in _raises(CorruptSlideError, path)


def test_shared_blank_tiles_pass(tmp_path: Path) -> None:
    # Some writers store one blank tile once and point every empty tile at it.
    path = write_tiff(tmp_path / "dedup.tif")
    rewrite_file_values(path, 0, 324, lambda a: np.where(np.arange(len(a)) < 6, a[0], a))
    assert preflight(path).tiff_pages[0].sparse_blocks == 0


def test_overlapping_tiles(tmp_path: Path) -> None:
    path = write_tiff(tmp_path / "overlap.tif")
    rewrite_file_values(path, 0, 325, lambda a: np.where(np.arange(len(a)) == 4, a + 1, a))
    assert "starts inside the one at byte" in _raises(CorruptSlideError, path)


def test_tile_inside_the_header(tmp_path: Path) -> None:
    path = write_tiff(tmp_path / "header.tif")
    rewrite_file_values(path, 0, 324, lambda a: np.where(np.arange(len(a)) == 2, 4, a))
    assert "starts at byte 4, inside the 8-byte TIFF header" in _raises(CorruptSlideError, path)


def test_short_uncompressed_tiles(tmp_path: Path) -> None:
    path = write_tiff(tmp_path / "short.tif")
    rewrite_file_values(path, 0, 325, lambda a: a // 2)
    assert "holds 6144 bytes, not the 12288 one tile needs" in _raises(CorruptSlideError, path)


def test_compression_tag_that_lies(tmp_path: Path) -> None:
    path = write_tiff(tmp_path / "lies.svs", data=TEXTURE, compression="jpeg")
    patch_long(path, 0, 259, 8)
    message = _raises(CorruptSlideError, path)
    assert "declares deflate compression but 3 of 3 sampled blocks do not start like it" in message


def test_offsets_shifted_off_the_tiles(tmp_path: Path) -> None:
    # Two pages, so the last shifted tile still ends inside the file (in the second page).
    path = write_tiff(tmp_path / "shifted.tif", pages=2, data=TEXTURE, compression="zlib")
    rewrite_file_values(path, 0, 324, lambda a: a + 7)
    assert "declares deflate compression but" in _raises(CorruptSlideError, path)


def test_one_damaged_tile_is_left_to_the_reader(tmp_path: Path) -> None:
    path = write_tiff(tmp_path / "one_bad.tif", data=TEXTURE, compression="jpeg")
    corrupt_tiles(path, 0, [0])
    assert preflight(path).tiff_pages[0].width == 256


@pytest.mark.parametrize(
    ("code", "value", "said"),
    [(322, 80, "declares 80 x 64 tiles of 8-bit samples but its JPEG tiles hold 64 x 64 pixels"),
     (258, 16, "tiles of 16-bit samples but its JPEG tiles hold 64 x 64 pixels of 8 bits")],
)  # fmt: skip
def test_jpeg_frames_that_contradict_the_tags(
    tmp_path: Path, code: int, value: int, said: str
) -> None:
    # 80 px tiles still make 4 columns of a 256 px image: only the JPEG frames show the lie.
    path = write_tiff(tmp_path / "frames.svs", data=TEXTURE, compression="jpeg")
    patch_long(path, 0, code, value)
    assert said in _raises(CorruptSlideError, path)


# --- fuzzing ------------------------------------------------------------------------------------


@cache
def _valid_tiff_bytes() -> bytes:
    buffer = io.BytesIO()
    with tifffile.TiffWriter(buffer) as writer:
        for _ in range(2):
            writer.write(RGB[:96, :128], tile=(32, 32), photometric="rgb")
    return buffer.getvalue()


_HEADERS = [b"II*\0", b"MM\0*", b"II+\0\x08\0\0\0", b"MM\0+\0\x08\0\0"]
_fuzzed_bytes = st.one_of(
    st.binary(max_size=512),
    st.tuples(st.sampled_from(_HEADERS), st.binary(max_size=512)).map(b"".join),
    # A valid two-page TIFF with a few bytes overwritten and maybe cut short: reaches deep checks.
    st.tuples(
        st.lists(st.tuples(st.integers(0, 4095), st.integers(0, 255)), min_size=1, max_size=8),
        st.integers(1, 1 << 16),
    ).map(lambda edits: _mutate(_valid_tiff_bytes(), *edits)),
)


def _mutate(data: bytes, edits: list[tuple[int, int]], keep: int) -> bytes:
    buffer = bytearray(data)
    for position, value in edits:
        buffer[position % len(buffer)] = value
    return bytes(buffer[:keep])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(content=_fuzzed_bytes)
def test_random_bytes_only_raise_slide_errors(
    tmp_path_factory: pytest.TempPathFactory, content: bytes
) -> None:
    path = tmp_path_factory.getbasetemp() / "fuzz.svs"
    path.write_bytes(content)
    try:
        preflight(path)
    except SlideError as error:  # anything else (struct.error, IndexError, ...) fails the test
        assert error.path == path


# --- real slides --------------------------------------------------------------------------------

REAL = [
    ("CMU-1-Small-Region.svs", FileKind.TIFF, (2220, 2967)),
    ("tcga-cr-7395-01a-01-ts1.svs", FileKind.TIFF, (4443, 3567)),
    ("openslide-fixtures/small.svs", FileKind.TIFF, (16, 16)),
    ("openslide-fixtures/boxes.tiff", FileKind.TIFF, (300, 250)),
    ("openslide-fixtures/boxes_0.dcm", FileKind.DICOM, None),
]


@pytest.mark.parametrize(("name", "kind", "dims"), REAL)
def test_real_slide_passes(
    wsi_dir: Path, name: str, kind: FileKind, dims: tuple[int, int] | None
) -> None:
    path = wsi_dir / name
    result = preflight(path)
    assert result.kind is kind
    assert result.size_bytes == path.stat().st_size
    if dims is None:
        assert result.tiff_pages == ()
    else:
        assert (result.tiff_pages[0].width, result.tiff_pages[0].height) == dims


def test_real_tcga_pyramid(wsi_dir: Path) -> None:
    pages = preflight(wsi_dir / "tcga-cr-7395-01a-01-ts1.svs").tiff_pages
    levels = [(p.width, p.height) for p in pages if p.tiled]
    assert levels == [(4443, 3567), (2221, 1783)]
    assert {p.compression for p in pages if p.tiled} == {33005}  # Aperio JPEG 2000
    assert (pages[0].tile_width, pages[0].tile_height) == (256, 256)


def test_real_truncated_slide(wsi_dir: Path) -> None:
    _raises(CorruptSlideError, wsi_dir / "broken" / "truncated.svs")


def test_named_pipe_fails_fast_instead_of_blocking(tmp_path: Path) -> None:
    """Issue 16: a FIFO given as a slide blocked open() forever; now it is refused at once."""
    fifo = tmp_path / "pipe.svs"
    os.mkfifo(fifo)
    with pytest.raises(SlideNotFoundError, match="named pipe"):
        preflight(fifo)


def test_info_reports_sparse_tiles(tmp_path: Path) -> None:
    path = write_tiff(tmp_path / "sparse.tif", data=TEXTURE, compression="jpeg")
    assert slide_info(path, mpp_override=0.5)["sparse_tiles"] == 0
    for code in (324, 325):
        rewrite_file_values(path, 0, code, lambda a: np.where(np.arange(len(a)) % 4 == 1, 0, a))
    assert slide_info(path, mpp_override=0.5)["sparse_tiles"] == 3


def test_decodable_compressions_are_tifffile_decoders() -> None:
    # The preflight's list is fixed (it imports no codec); tifffile must still decode each.
    decoders = {int(code) for code in tifffile.COMPRESSION if code in tifffile.TIFF.DECOMPRESSORS}
    assert decoders >= DECODABLE_COMPRESSIONS


def test_uncompressed_ycbcr_is_sized_by_its_subsampling(tmp_path: Path) -> None:
    path = write_tiff(tmp_path / "ycbcr.tif", data=TEXTURE)
    patch_long(path, 0, 262, 6)  # 3 bytes a pixel stored, 1.5 needed at 2 x 2: long enough
    assert preflight(path).tiff_pages[0].samples_per_pixel == 3
    rewrite_file_values(path, 0, 325, lambda a: a // 4)  # under 1.5 bytes a pixel: too short
    assert "holds 3072 bytes, not the 6144 one tile needs" in _raises(CorruptSlideError, path)
