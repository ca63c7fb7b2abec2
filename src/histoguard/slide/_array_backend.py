"""In-memory slides: a numpy array that behaves like a pyramidal slide, and plain image files."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from histoguard.core._image import decode_image, image_size
from histoguard.errors import CorruptSlideError, ImageError, ImageTooLargeError, SlideTooLargeError
from histoguard.slide._preflight import FileKind
from histoguard.slide._reader import SlideReader, resize
from histoguard.slide._registry import register_backend

_T = TypeVar("_T")
#: Lower levels are made by halving until the longest side is at most this (pixels).
_MIN_LEVEL_SIZE = 512


class ArraySlide(SlideReader):
    """A ``(H, W, 3)`` uint8 array served through the slide contract (tests, virtual slides).

    Lower levels are built by halving until the longest side is at most ``min_level_size``, so
    level selection and resizing are exercised exactly as with a real pyramid.

    Args:
        array: ``(H, W, 3)`` uint8 RGB, the level-0 image.
        mpp: micrometres per level-0 pixel, or None to behave like a slide without mpp.
        name: used as the slide's path in messages and outputs.
        min_level_size: stop building levels once the longest side is at most this (pixels).
    """

    def __init__(
        self,
        array: np.ndarray,
        *,
        mpp: float | None = None,
        name: str = "array-slide",
        mpp_override: float | None = None,
        min_level_size: int = _MIN_LEVEL_SIZE,
    ) -> None:
        if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 array, got {array.shape} {array.dtype}")
        self._levels = _pyramid(array, min_level_size)
        self._mpp = mpp
        self._min_level_size = min_level_size
        super().__init__(name, mpp_override=mpp_override)

    def _open(self) -> None:
        """Nothing to open: the pixels are in memory."""

    def _close(self) -> None:
        """Nothing to release."""

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return tuple((level.shape[1], level.shape[0]) for level in self._levels)

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        dimensions = self.level_dimensions
        return tuple(dimensions[0][0] / width for width, _ in dimensions)

    @property
    def properties(self) -> Mapping[str, str]:
        return {} if self._mpp is None else {"mpp": str(self._mpp)}

    @property
    def metadata_mpp(self) -> float | None:
        return self._mpp

    @property
    def objective_power(self) -> float | None:
        return None

    @property
    def vendor(self) -> str | None:
        return None

    @property
    def associated_image_names(self) -> tuple[str, ...]:
        return ()

    def read_associated_image(self, name: str) -> np.ndarray:
        raise KeyError(f"{self.path} has no associated image {name!r}")

    def _read(self, x: int, y: int, width: int, height: int, level: int) -> np.ndarray:
        image = self._pixels()[level]
        downsample = self.level_downsamples[level]
        left, top = int(x // downsample), int(y // downsample)
        region = np.full((height, width, 3), 255, dtype=np.uint8)
        x0, y0 = max(left, 0), max(top, 0)
        x1, y1 = min(left + width, image.shape[1]), min(top + height, image.shape[0])
        if x1 > x0 and y1 > y0:
            region[y0 - top : y1 - top, x0 - left : x1 - left] = image[y0:y1, x0:x1]
        return region

    def _pixels(self) -> list[np.ndarray]:
        """The pyramid's levels, ``(H, W, 3)`` uint8 each."""
        return self._levels

    def clone(self) -> SlideReader:
        """The same object: in-memory reads are thread-safe and need no handle of their own."""
        return self

    def __getstate__(self) -> dict[str, Any]:
        return {
            "array": self._levels[0],
            "mpp": self._mpp,
            "name": str(self.path),
            "mpp_override": self.mpp_override,
            "min_level_size": self._min_level_size,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(  # type: ignore[misc]
            state["array"],
            mpp=state["mpp"],
            name=state["name"],
            mpp_override=state["mpp_override"],
            min_level_size=state["min_level_size"],
        )


@register_backend(
    "image",
    priority=30,
    kinds={FileKind.PNG, FileKind.JPEG, FileKind.TIFF},
    formats="PNG, JPEG and plain TIFF images, as single-level slides",
)
class ImageSlide(ArraySlide):
    """A plain image file (PNG, JPEG, TIFF) as a slide, decoded whole into memory when its
    pixels are first read.

    Opening reads only the header, so ``info`` on a small file that declares a huge image (a
    decompression bomb) costs nothing; the size limit is checked before any pixel is decoded.
    Images carry no trustworthy microscope resolution, so ``mpp_override`` is needed to tile.
    The pixel limit is explicit and per call: Pillow's global decompression-bomb guard is never
    changed. The default limit is Pillow's own ``Image.MAX_IMAGE_PIXELS``; bigger images belong
    in a pyramidal TIFF.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        mpp_override: float | None = None,
        max_pixels: int | None = None,
    ) -> None:
        path = Path(path)
        self._limit = max_pixels if max_pixels is not None else Image.MAX_IMAGE_PIXELS
        width, height = self._checked(image_size, path)
        self._dimensions = _pyramid_dimensions(width, height, _MIN_LEVEL_SIZE)
        self._decoded: list[np.ndarray] | None = None
        self._decoding = threading.Lock()
        self._mpp = None
        self._min_level_size = _MIN_LEVEL_SIZE
        self._max_pixels = max_pixels
        SlideReader.__init__(self, str(path), mpp_override=mpp_override)

    def _checked(self, read: Callable[..., _T], path: Path) -> _T:
        fix = "Convert it to a pyramidal TIFF (vips tiffsave --tile --pyramid)"
        try:
            return read(path, max_pixels=self._limit)
        except ImageTooLargeError as error:
            raise SlideTooLargeError(path, error.problem, fix) from error
        except ImageError as error:
            raise CorruptSlideError(path, error.problem, "Re-export the image") from error

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return self._dimensions

    def _pixels(self) -> list[np.ndarray]:
        with self._decoding:  # reads run in threads; the image is decoded once
            if self._decoded is None:
                self._decoded = _pyramid(self._checked(decode_image, self.path), _MIN_LEVEL_SIZE)
            return self._decoded

    def __getstate__(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "mpp_override": self.mpp_override,
            "max_pixels": self._max_pixels,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(  # type: ignore[misc]
            state["path"], mpp_override=state["mpp_override"], max_pixels=state["max_pixels"]
        )


def _pyramid_dimensions(
    width: int, height: int, min_level_size: int
) -> tuple[tuple[int, int], ...]:
    """``(width, height)`` of each level of :func:`_pyramid`, from the level-0 size alone."""
    dimensions = [(width, height)]
    while max(dimensions[-1]) > min_level_size:
        width, height = dimensions[-1][0] // 2, dimensions[-1][1] // 2
        if min(width, height) < 1:
            break
        dimensions.append((width, height))
    return tuple(dimensions)


def _pyramid(array: np.ndarray, min_level_size: int) -> list[np.ndarray]:
    """``array`` and its halvings, ``(H, W, 3)`` uint8 each (see :func:`_pyramid_dimensions`)."""
    levels = [np.ascontiguousarray(array)]
    for width, height in _pyramid_dimensions(array.shape[1], array.shape[0], min_level_size)[1:]:
        levels.append(resize(levels[-1][: height * 2, : width * 2], width, height))
    return levels
