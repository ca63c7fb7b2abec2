"""The reader contract, on every back-end, on generated and real slides."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from histoguard import (
    MissingMppError,
    RegionReadError,
    SlideNotFoundError,
    SlideTooLargeError,
    UnsupportedFormatError,
)
from histoguard.slide import ArraySlide, ImageSlide, list_backends, open_slide, slide_info
from histoguard.slide._reader import rgba_to_rgb

TIFF_BACKENDS = ["openslide", "tiffslide"]


def test_backends_are_registered_in_priority_order() -> None:
    assert [b.name for b in list_backends()] == ["openslide", "tiffslide", "image"]


@pytest.mark.parametrize("backend", TIFF_BACKENDS)
def test_contract_on_a_generated_pyramid(known_slide: Path, backend: str) -> None:
    with open_slide(known_slide, backend=backend) as slide:
        assert slide.backend_name == backend
        assert slide.level_dimensions == ((4096, 3072), (2048, 1536), (1024, 768))
        assert slide.level_downsamples == (1.0, 2.0, 4.0)
        assert slide.mpp == pytest.approx(0.25)
        assert slide.level_mpps == pytest.approx((0.25, 0.5, 1.0))
        region = slide.read_region(1000, 1000, 64, 32, level=1)
        assert region.shape == (32, 64, 3) and region.dtype == np.uint8
        # Outside the slide is white, whatever the back-end pads with.
        outside = slide.read_region(4096 - 16, 3072 - 16, 32, 32, level=0)
        assert np.all(outside[16:, :] == 255) and np.all(outside[:, 16:] == 255)
        thumbnail = slide.get_thumbnail(512)
        assert thumbnail.image.shape == (384, 512, 3)
        assert thumbnail.downsample == pytest.approx(8.0)
        assert not thumbnail.unreadable.any() and thumbnail.first_error == ""


def test_backends_agree_at_level_zero(known_slide: Path) -> None:
    with (
        open_slide(known_slide, backend="openslide") as a,
        open_slide(known_slide, backend="tiffslide") as b,
    ):
        for x, y in [(0, 0), (700, 900), (2000, 1500)]:
            assert np.array_equal(a.read_region(x, y, 300, 200), b.read_region(x, y, 300, 200))


def test_reader_survives_pickling_and_cloning(known_slide: Path) -> None:
    with open_slide(known_slide) as slide:
        expected = slide.read_region(600, 600, 50, 50)
        for twin in (pickle.loads(pickle.dumps(slide)), slide.clone()):
            assert twin is not slide
            assert np.array_equal(twin.read_region(600, 600, 50, 50), expected)
            twin.close()
        slide.close()
        # Reading after close reopens transparently.
        assert np.array_equal(slide.read_region(600, 600, 50, 50), expected)


def test_missing_mpp_needs_an_override(tmp_path: Path) -> None:
    array = np.full((300, 400, 3), 200, np.uint8)
    path = tmp_path / "plain.png"
    Image.fromarray(array).save(path)
    with pytest.raises(MissingMppError, match="--mpp-override") as info:
        open_slide(path)
    assert "plain.png" in str(info.value)
    with open_slide(path, mpp_override=0.5) as slide:
        assert slide.mpp == 0.5 and slide.backend_name == "image"
        assert np.array_equal(slide.read_region(0, 0, 400, 300), array)
    assert slide_info(path)["mpp"] is None


def test_implausible_metadata_mpp_is_refused() -> None:
    slide = ArraySlide(np.zeros((10, 10, 3), np.uint8), mpp=352.77, name="screen.tif")
    with pytest.raises(MissingMppError, match="file-format default"):
        slide.mpp  # noqa: B018
    assert not slide.has_mpp


def test_plain_image_pixel_limit_is_explicit(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(path)
    limit_before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(SlideTooLargeError, match="above the limit of 9999"):
        ImageSlide(path, max_pixels=9_999)
    assert ImageSlide(path, max_pixels=10_000).dimensions == (100, 100)
    assert limit_before == Image.MAX_IMAGE_PIXELS  # Pillow's global guard is never touched


def test_a_plain_image_is_decoded_only_when_its_pixels_are_read(tmp_path: Path) -> None:
    # A 236 kB PNG declaring 9000 x 9000 px: `info` used to decode it whole (1.15 GB).
    path = tmp_path / "bomb.png"
    Image.fromarray(np.zeros((9000, 9000, 3), np.uint8)).save(path, optimize=True)
    # Peak memory of a fresh process (VmHWM: ru_maxrss would carry this process's over exec).
    probe = (
        "from histoguard.slide import slide_info\n"
        f"assert slide_info({str(path)!r})['dimensions'] == [9000, 9000]\n"
        "print(open('/proc/self/status').read().split('VmHWM:')[1].split()[0])"
    )
    if not Path("/proc/self/status").is_file():
        pytest.skip("peak memory is read from Linux's /proc")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.split()[-1]) < 200_000  # kB: below the 243 MB of its pixels alone
    small = tmp_path / "small.png"
    pixels = np.random.default_rng(0).integers(0, 255, (700, 900, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(small)
    lazy, eager = ImageSlide(small, mpp_override=0.5), ArraySlide(pixels, mpp=0.5)
    assert lazy.level_dimensions == eager.level_dimensions
    assert lazy.level_downsamples == eager.level_downsamples
    for level in range(len(eager.level_dimensions)):
        region = (10, 20, 64, 48, level)
        np.testing.assert_array_equal(lazy.read_region(*region), eager.read_region(*region))


def test_array_slide_builds_a_pyramid() -> None:
    slide = ArraySlide(np.zeros((2000, 3000, 3), np.uint8), mpp=0.5, min_level_size=400)
    assert slide.level_dimensions == ((3000, 2000), (1500, 1000), (750, 500), (375, 250))
    assert slide.best_level_for_downsample(4.0) == 2
    assert slide.best_level_for_downsample(3.9) == 1


def test_rgba_composites_on_white() -> None:
    rgba = np.array([[[10, 20, 30, 255], [0, 0, 0, 0], [100, 100, 100, 128]]], np.uint8)
    assert rgba_to_rgb(rgba).tolist() == [[[10, 20, 30], [255, 255, 255], [177, 177, 177]]]


def test_missing_file_is_a_typed_error(tmp_path: Path) -> None:
    with pytest.raises(SlideNotFoundError, match="nope.svs"):
        open_slide(tmp_path / "nope.svs")


def test_undecodable_region_is_a_typed_error(wsi_dir: Path) -> None:
    # OpenSlide's fixture opens, but its pixel data is corrupt.
    path = wsi_dir / "openslide-fixtures" / "unreadable.svs"
    with open_slide(path, backend="openslide") as slide:
        with pytest.raises(RegionReadError, match="unreadable.svs"):
            slide.read_region(0, 0, 16, 16)
        # The reader was reopened: metadata still works after the failure.
        assert slide.dimensions == (16, 16)


def test_unopenable_fixture_is_a_typed_error(wsi_dir: Path) -> None:
    # An unknown compression (52479): the preflight refuses it before any back-end decodes it.
    path = wsi_dir / "openslide-fixtures" / "unopenable.tiff"
    for backend in ("openslide", None):
        with pytest.raises(UnsupportedFormatError, match=r"unopenable.tiff: .*compression 52479"):
            open_slide(path, backend=backend, mpp_override=0.5)


@pytest.mark.parametrize(
    ("name", "dims", "mpp", "vendor"),
    [
        ("CMU-1-Small-Region.svs", (2220, 2967), 0.499, "aperio"),
        ("openslide-fixtures/boxes_0.dcm", (16, 16), 0.499, "dicom"),
    ],
)
def test_real_slides_open_with_metadata(
    wsi_dir: Path, name: str, dims: tuple[int, int], mpp: float, vendor: str
) -> None:
    with open_slide(wsi_dir / name) as slide:
        assert slide.dimensions == dims
        assert slide.mpp == pytest.approx(mpp)
        assert slide.vendor == vendor


def test_real_tcga_slide_has_no_mpp(wsi_dir: Path) -> None:
    path = wsi_dir / "tcga-cr-7395-01a-01-ts1.svs"
    with pytest.raises(MissingMppError, match="tcga-cr-7395"):
        open_slide(path)
    with open_slide(path, mpp_override=0.25) as slide:
        assert slide.level_dimensions == ((4443, 3567), (2221, 1783))
        assert slide.level_mpps[1] == pytest.approx(0.25 * 2.0005, rel=1e-4)


def test_real_boxes_tiff_72dpi_is_not_a_resolution(wsi_dir: Path) -> None:
    with pytest.raises(MissingMppError, match="file-format default"):
        open_slide(wsi_dir / "openslide-fixtures" / "boxes.tiff")


def test_real_jpeg2000_slide_reads_identically_through_both_backends(wsi_dir: Path) -> None:
    path = wsi_dir / "tcga-cr-7395-01a-01-ts1.svs"
    with (
        open_slide(path, backend="openslide", mpp_override=0.25) as a,
        open_slide(path, backend="tiffslide", mpp_override=0.25) as b,
    ):
        assert np.array_equal(
            a.read_region(1000, 1200, 256, 256), b.read_region(1000, 1200, 256, 256)
        )
        assert a.associated_image_names == b.associated_image_names == ("thumbnail",)
        assert a.read_associated_image("thumbnail").ndim == 3


def test_a_thumbnail_is_never_drawn_from_a_gigapixel_level(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import histoguard.slide._reader as reader_module
    from histoguard import SlideTooLargeError, tile_slides
    from histoguard.slide import TilingConfig

    flat = ArraySlide(np.zeros((300, 400, 3), np.uint8), mpp=0.5, min_level_size=10_000)
    monkeypatch.setattr(reader_module, "MAX_THUMBNAIL_SOURCE_PIXELS", 100_000)
    with pytest.raises(SlideTooLargeError, match="no pyramid"):
        flat.get_thumbnail(64)
    pyramid = ArraySlide(np.zeros((300, 400, 3), np.uint8), mpp=0.5, min_level_size=64)
    assert pyramid.get_thumbnail(64).image.shape == (48, 64, 3)  # read from a coarse level
    # In a batch, the refusal is the slide's typed failure.
    path = tmp_path / "flat.tiff"

    tifffile.imwrite(
        path,
        np.zeros((512, 512, 3), np.uint8),
        tile=(256, 256),
        resolution=(20000, 20000),
        resolutionunit="CENTIMETER",
    )
    report = tile_slides([path], tmp_path / "out", TilingConfig())
    assert report.results[0].status == "failed"
    assert "no pyramid" in report.results[0].message
