"""In-memory slides: a numpy array that behaves like a pyramidal slide, and plain image files."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from histoguard.core._image import decode_image
from histoguard.errors import CorruptSlideError, ImageError, ImageTooLargeError, SlideTooLargeError
from histoguard.slide._preflight import FileKind
from histoguard.slide._reader import SlideReader, resize
from histoguard.slide._registry import register_backend


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
        min_level_size: int = 512,
    ) -> None:
        if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 array, got {array.shape} {array.dtype}")
        self._levels = [np.ascontiguousarray(array)]
        while max(self._levels[-1].shape[:2]) > min_level_size:
            previous = self._levels[-1]
            height, width = (previous.shape[0] // 2, previous.shape[1] // 2)
            if min(height, width) < 1:
                break
            self._levels.append(resize(previous[: height * 2, : width * 2], width, height))
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
        width0 = self._levels[0].shape[1]
        return tuple(width0 / level.shape[1] for level in self._levels)

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
        image = self._levels[level]
        downsample = self.level_downsamples[level]
        left, top = int(x // downsample), int(y // downsample)
        region = np.full((height, width, 3), 255, dtype=np.uint8)
        x0, y0 = max(left, 0), max(top, 0)
        x1, y1 = min(left + width, image.shape[1]), min(top + height, image.shape[0])
        if x1 > x0 and y1 > y0:
            region[y0 - top : y1 - top, x0 - left : x1 - left] = image[y0:y1, x0:x1]
        return region

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
    """A plain image file (PNG, JPEG, TIFF) as a slide, decoded whole into memory.

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
        limit = max_pixels if max_pixels is not None else Image.MAX_IMAGE_PIXELS
        fix = "Convert it to a pyramidal TIFF (vips tiffsave --tile --pyramid)"
        try:
            array = decode_image(path, max_pixels=limit)
        except ImageTooLargeError as error:
            raise SlideTooLargeError(path, error.problem, fix) from error
        except ImageError as error:
            raise CorruptSlideError(path, error.problem, "Re-export the image") from error
        super().__init__(array, mpp=None, name=str(path), mpp_override=mpp_override)
        self._max_pixels = max_pixels

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
