"""What the OpenSlide and tiffslide back-ends share: tiffslide mirrors OpenSlide's API."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from histoguard.slide._reader import SlideReader


def positive_float(value: object) -> float | None:
    """``value`` as a positive float, or None when absent, unparsable or not positive."""
    if value is None or value == "":
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


class OpenSlideLikeReader(SlideReader):
    """Metadata of a handle with OpenSlide's interface, whose standard keys use ``_prefix``."""

    #: Namespace of the standard property keys (``"openslide"`` -> ``openslide.mpp-x``).
    _prefix: ClassVar[str]
    _handle: Any

    def _close(self) -> None:
        self._handle.close()

    def _standard(self, key: str) -> Any:
        return self._handle.properties.get(f"{self._prefix}.{key}")

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return tuple((int(w), int(h)) for w, h in self._handle.level_dimensions)

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return tuple(float(ds) for ds in self._handle.level_downsamples)

    @property
    def properties(self) -> Mapping[str, str]:
        return {key: str(value) for key, value in self._handle.properties.items()}

    @property
    def metadata_mpp(self) -> float | None:
        values = [positive_float(self._standard(key)) for key in ("mpp-x", "mpp-y")]
        known = [v for v in values if v is not None]
        return sum(known) / len(known) if known else None

    @property
    def objective_power(self) -> float | None:
        return positive_float(self._standard("objective-power"))

    @property
    def vendor(self) -> str | None:
        vendor = self._standard("vendor")
        return str(vendor) if vendor else None

    @property
    def associated_image_names(self) -> tuple[str, ...]:
        return tuple(self._handle.associated_images.keys())
