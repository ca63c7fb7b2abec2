"""The one contract every slide back-end implements.

All coordinates are level-0 pixels; all scales are micrometres per pixel (mpp) at level 0.
Pixels come back as ``(height, width, 3)`` uint8 RGB numpy arrays; areas outside the slide, and
transparent areas inside it, are white.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
from PIL import Image

from histoguard.core._image import composite_on_white
from histoguard.errors import (
    CorruptSlideError,
    MissingMppError,
    RegionReadError,
    SlideError,
    SlideTooLargeError,
)
from histoguard.slide._preflight import RECOPY

#: Plausible microscope resolutions. Outside this range a metadata mpp is a file-format default
#: (72 dpi = 352.8 µm/px is the classic) rather than a measurement, and is ignored.
PLAUSIBLE_MPP_RANGE: tuple[float, float] = (0.01, 50.0)
#: Largest level (pixels) a thumbnail is drawn from: about 65,000 x 65,000, a few minutes of
#: decoding. A slide without a coarser level (no pyramid) is refused instead of read for hours.
MAX_THUMBNAIL_SOURCE_PIXELS = 2**32

#: Side of the blocks in which thumbnails are read, in pixels of the level read; damaged
#: blocks are split down to the smaller size to isolate the damage.
_THUMBNAIL_BLOCK_PX = 2048
_THUMBNAIL_MIN_BLOCK_PX = 256


@dataclass(frozen=True)
class Thumbnail:
    """A whole-slide overview.

    Attributes:
        image: ``(H, W, 3)`` uint8 RGB.
        downsample: level-0 pixels per thumbnail pixel (the same on both axes).
        unreadable: ``(H, W)`` bool, True where the slide failed to decode (white in ``image``).
        first_error: the first decode error, empty when everything was read.
    """

    image: np.ndarray
    downsample: float
    unreadable: np.ndarray
    first_error: str = ""


class SlideReader(ABC):
    """A whole-slide image opened read-only through one back-end.

    Subclasses implement the ``_open``/``_close`` pair, the metadata properties and ``_read``;
    everything else (mpp resolution, bounds handling, thumbnails, error wrapping, pickling for
    worker processes) lives here once.

    Args:
        path: the slide file.
        mpp_override: micrometres per level-0 pixel to use instead of the metadata (needed when
            the metadata has none).

    Raises:
        SlideError: a subclass saying why the file cannot be opened.
    """

    #: Registry name of the back-end, set by :func:`register_backend`.
    backend_name: ClassVar[str] = ""

    def __init__(self, path: str | Path, *, mpp_override: float | None = None) -> None:
        if mpp_override is not None and not (math.isfinite(mpp_override) and mpp_override > 0):
            raise ValueError(f"mpp_override must be a positive number, got {mpp_override!r}")
        self.path = Path(path)
        self.mpp_override = mpp_override
        self._is_open = False
        self._open()
        self._is_open = True
        try:
            self._check_geometry()
        except SlideError:
            self.close()
            raise

    # --- what a back-end provides -------------------------------------------------------------

    @abstractmethod
    def _open(self) -> None:
        """Open the underlying handle; raise a :class:`SlideError` subclass on failure."""

    @abstractmethod
    def _close(self) -> None:
        """Release the underlying handle."""

    @property
    @abstractmethod
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        """``(width, height)`` in pixels of every pyramid level, level 0 first."""

    @property
    @abstractmethod
    def level_downsamples(self) -> tuple[float, ...]:
        """Level-0 pixels per pixel of every level (1.0 for level 0)."""

    @property
    @abstractmethod
    def properties(self) -> Mapping[str, str]:
        """The back-end's raw metadata key/value pairs."""

    @property
    @abstractmethod
    def metadata_mpp(self) -> float | None:
        """Micrometres per level-0 pixel as stored in the file, or None when absent."""

    @property
    @abstractmethod
    def objective_power(self) -> float | None:
        """Scanning objective magnification (e.g. 20.0, 40.0), or None when unknown."""

    @property
    @abstractmethod
    def vendor(self) -> str | None:
        """Scanner vendor or format family (e.g. ``"aperio"``), or None when unknown."""

    @property
    @abstractmethod
    def associated_image_names(self) -> tuple[str, ...]:
        """Names of associated images (label, macro, thumbnail) stored in the file."""

    @abstractmethod
    def read_associated_image(self, name: str) -> np.ndarray:
        """The associated image ``name`` as ``(H, W, 3)`` uint8 RGB."""

    @abstractmethod
    def _read(self, x: int, y: int, width: int, height: int, level: int) -> np.ndarray:
        """Read a region; arguments already validated. Returns ``(height, width, 3)`` uint8."""

    def _check_geometry(self) -> None:
        """Refuse a pyramid no real slide has: an empty level, a level-0 downsample other than
        1, or downsamples that are not finite or shrink from one level to the next.

        Raises:
            CorruptSlideError: naming the file, the level and the implausible value.
        """
        dimensions, downsamples = self.level_dimensions, self.level_downsamples
        fix = RECOPY
        if not dimensions or len(dimensions) != len(downsamples):
            raise CorruptSlideError(
                self.path,
                f"the pyramid lists {len(dimensions)} level sizes but "
                f"{len(downsamples)} downsamples",
                fix,
            )
        previous = 1.0
        for level, ((width, height), ds) in enumerate(zip(dimensions, downsamples, strict=True)):
            if width <= 0 or height <= 0:
                raise CorruptSlideError(
                    self.path, f"level {level} declares {width} x {height} pixels", fix
                )
            wrong_base = level == 0 and not math.isclose(ds, 1.0, rel_tol=1e-3)
            # 1% slack: vendors round level sizes, so consecutive downsamples may tie or wobble.
            if not math.isfinite(ds) or wrong_base or ds < previous * 0.99:
                raise CorruptSlideError(
                    self.path,
                    f"level {level} declares a downsample of {ds!r} (after {previous!r}); "
                    "a pyramid starts at 1 and grows",
                    fix,
                )
            previous = ds

    # --- the contract every caller uses -------------------------------------------------------

    @property
    def level_count(self) -> int:
        """Number of pyramid levels."""
        return len(self.level_dimensions)

    @property
    def dimensions(self) -> tuple[int, int]:
        """``(width, height)`` of level 0 in pixels."""
        return self.level_dimensions[0]

    @property
    def mpp(self) -> float:
        """Micrometres per level-0 pixel: the override if given, else the metadata.

        Raises:
            MissingMppError: the metadata has no plausible mpp and no override was given.
        """
        if self.mpp_override is not None:
            return self.mpp_override
        mpp = self.metadata_mpp
        if mpp is None:
            raise MissingMppError(
                self.path,
                "the slide's metadata has no microns-per-pixel (mpp)",
                "Pass the scan resolution with --mpp-override (Python: mpp_override=), "
                "e.g. 0.25 for a 40x or 0.5 for a 20x scan",
            )
        low, high = PLAUSIBLE_MPP_RANGE
        if not low <= mpp <= high:
            raise MissingMppError(
                self.path,
                f"the metadata says {mpp:.4g} µm/px, which is a file-format default "
                "(e.g. 72 dpi), not a microscope resolution",
                "Pass the real scan resolution with --mpp-override (Python: mpp_override=)",
            )
        return mpp

    @property
    def has_mpp(self) -> bool:
        """Whether :attr:`mpp` resolves without raising."""
        try:
            self.mpp  # noqa: B018 - evaluated for its check
        except MissingMppError:
            return False
        return True

    @property
    def level_mpps(self) -> tuple[float, ...]:
        """Micrometres per pixel of every level (raises like :attr:`mpp`)."""
        mpp = self.mpp
        return tuple(mpp * ds for ds in self.level_downsamples)

    def read_region(self, x: int, y: int, width: int, height: int, level: int = 0) -> np.ndarray:
        """Read pixels of one level.

        Args:
            x, y: top-left corner in level-0 pixel coordinates (may lie outside the slide).
            width, height: size of the region in pixels of ``level``.
            level: pyramid level to read from.

        Returns:
            ``(height, width, 3)`` uint8 RGB; outside the slide is white.

        Raises:
            ValueError: non-positive size or a level that does not exist.
            RegionReadError: the back-end failed to decode part of the region. After this the
                reader is reopened, because OpenSlide handles stay in an error state.
        """
        self._ensure_open()
        if width <= 0 or height <= 0:
            raise ValueError(f"region size must be positive, got {width}x{height}")
        if not 0 <= level < self.level_count:
            raise ValueError(f"level {level} does not exist; {self.path} has {self.level_count}")
        try:
            region = self._read(int(x), int(y), int(width), int(height), level)
        except SlideError:
            raise
        except Exception as error:  # back-ends raise many unrelated types for a bad tile
            self.reopen()
            raise RegionReadError(
                self.path,
                f"cannot decode region x={x}, y={y}, {width}x{height} at level {level} "
                f"({type(error).__name__}: {error})",
                "The file is damaged in this area; re-export or re-scan the slide",
            ) from error
        return region

    def best_level_for_downsample(self, downsample: float, *, tolerance: float = 0.01) -> int:
        """The coarsest level whose downsample is at most ``downsample * (1 + tolerance)``.

        Reading there and resizing down never upsamples by more than ``tolerance``.
        """
        limit = downsample * (1.0 + tolerance)
        candidates = [i for i, ds in enumerate(self.level_downsamples) if ds <= limit]
        return max(candidates, key=lambda i: self.level_downsamples[i]) if candidates else 0

    def get_thumbnail(self, max_size: int = 2048) -> Thumbnail:
        """A downsampled view of the whole slide, robust to damaged regions.

        Reads the coarsest level that still has at least the requested resolution, in blocks,
        so memory stays bounded even for single-level slides. A block that fails to decode is
        split until the damage is isolated (down to 256 px); what stays unreadable is white in
        the image and marked in :attr:`Thumbnail.unreadable`, never silently passed as glass.

        Args:
            max_size: longest side of the thumbnail in pixels.

        Returns:
            A :class:`Thumbnail`.
        """
        self._ensure_open()
        width0, height0 = self.dimensions
        downsample = max(width0, height0) / max_size if max(width0, height0) > max_size else 1.0
        out_w = max(1, round(width0 / downsample))
        out_h = max(1, round(height0 / downsample))
        level = self.best_level_for_downsample(downsample)
        level_w, level_h = self.level_dimensions[level]
        if level_w * level_h > MAX_THUMBNAIL_SOURCE_PIXELS:
            raise SlideTooLargeError(
                self.path,
                f"its coarsest level usable for a thumbnail is {level_w} x {level_h} px "
                f"({level_w * level_h / 1e9:.1f} gigapixels, above "
                f"{MAX_THUMBNAIL_SOURCE_PIXELS / 1e9:.1f}): the slide has no pyramid, and a "
                "thumbnail would decode all of it",
                "Convert it to a pyramidal TIFF (vips tiffsave --tile --pyramid)",
            )
        image = np.full((out_h, out_w, 3), 255, dtype=np.uint8)
        unreadable = np.zeros((out_h, out_w), dtype=bool)
        errors: list[str] = []
        scale = (out_w / level_w, out_h / level_h)
        for top in range(0, level_h, _THUMBNAIL_BLOCK_PX):
            for left in range(0, level_w, _THUMBNAIL_BLOCK_PX):
                box = (
                    left,
                    top,
                    min(left + _THUMBNAIL_BLOCK_PX, level_w),
                    min(top + _THUMBNAIL_BLOCK_PX, level_h),
                )
                self._thumbnail_block(level, box, scale, image, unreadable, errors)
        return Thumbnail(
            image=image,
            downsample=width0 / out_w,
            unreadable=unreadable,
            first_error=errors[0] if errors else "",
        )

    def _thumbnail_block(
        self,
        level: int,
        box: tuple[int, int, int, int],
        scale: tuple[float, float],
        image: np.ndarray,
        unreadable: np.ndarray,
        errors: list[str],
    ) -> None:
        """Read level pixels ``box`` = (x0, y0, x1, y1) into their place in the thumbnail."""
        x0, y0, x1, y1 = box
        ox0, ox1 = round(x0 * scale[0]), round(x1 * scale[0])
        oy0, oy1 = round(y0 * scale[1]), round(y1 * scale[1])
        if ox1 <= ox0 or oy1 <= oy0:
            return
        level_ds = self.level_downsamples[level]
        try:
            block = self.read_region(
                round(x0 * level_ds), round(y0 * level_ds), x1 - x0, y1 - y0, level
            )
        except RegionReadError as error:
            if min(x1 - x0, y1 - y0) > _THUMBNAIL_MIN_BLOCK_PX:
                xm, ym = (x0 + x1) // 2, (y0 + y1) // 2
                for part in (
                    (x0, y0, xm, ym),
                    (xm, y0, x1, ym),
                    (x0, ym, xm, y1),
                    (xm, ym, x1, y1),
                ):
                    self._thumbnail_block(level, part, scale, image, unreadable, errors)
                return
            unreadable[oy0:oy1, ox0:ox1] = True
            errors.append(str(error))
            return
        image[oy0:oy1, ox0:ox1] = resize(block, ox1 - ox0, oy1 - oy0)

    def summary(self) -> dict[str, Any]:
        """Key facts as JSON-compatible values (mpp is None when unknown)."""
        return {
            "path": str(self.path),
            "backend": self.backend_name,
            "vendor": self.vendor,
            "dimensions": list(self.dimensions),
            "level_dimensions": [list(dims) for dims in self.level_dimensions],
            "level_downsamples": list(self.level_downsamples),
            "mpp": self.mpp if self.has_mpp else None,
            "metadata_mpp": self.metadata_mpp,
            "objective_power": self.objective_power,
            "associated_images": list(self.associated_image_names),
        }

    # --- life cycle ---------------------------------------------------------------------------

    def close(self) -> None:
        """Release the file handle; :meth:`reopen` or any read opens it again."""
        if self._is_open:
            self._close()
            self._is_open = False

    def reopen(self) -> None:
        """Close and open the handle again (clears back-end error states)."""
        self.close()
        self._open()
        self._is_open = True

    def clone(self) -> SlideReader:
        """An independent reader of the same slide (for another thread or process)."""
        twin = object.__new__(type(self))
        twin.__setstate__(self.__getstate__())
        return twin

    def _ensure_open(self) -> None:
        if not self._is_open:
            self._open()
            self._is_open = True

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        # Handles cannot cross processes: ship the recipe, reopen on arrival.
        return {"path": self.path, "mpp_override": self.mpp_override}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], mpp_override=state["mpp_override"])  # type: ignore[misc]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({str(self.path)!r}, levels={self.level_count}, "
            f"dimensions={self.dimensions})"
        )


def resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize an ``(H, W, 3)`` uint8 image; area averaging when shrinking, bicubic otherwise."""
    if image.shape[1] == width and image.shape[0] == height:
        return image
    shrinking = width <= image.shape[1] and height <= image.shape[0]
    method = Image.Resampling.BOX if shrinking else Image.Resampling.BICUBIC
    return np.asarray(Image.fromarray(image).resize((width, height), method))


def rgba_to_rgb(rgba: np.ndarray) -> np.ndarray:
    """Composite non-premultiplied ``(H, W, 4)`` uint8 RGBA onto white, giving ``(H, W, 3)``."""
    return composite_on_white(rgba)
