"""histoguard: whole-slide-image models that hold up across hospitals, and audits for any encoder.

The public API is re-exported here; implementation modules are private.
"""

from histoguard._tile_slides import tile_slide, tile_slides
from histoguard._version import __version__
from histoguard.core._batch import BatchReport, SlideResult
from histoguard.errors import (
    CorruptSlideError,
    HistoguardError,
    MissingMppError,
    NoSlidesError,
    OutputError,
    RegionReadError,
    SlideError,
    SlideNotFoundError,
    SlideTooLargeError,
    TilingError,
    UnsupportedFormatError,
)
from histoguard.slide import (
    SlideReader,
    TileSpec,
    TilingConfig,
    TissueParams,
    open_slide,
    read_coords_file,
)

__all__ = [
    "BatchReport",
    "CorruptSlideError",
    "HistoguardError",
    "MissingMppError",
    "NoSlidesError",
    "OutputError",
    "RegionReadError",
    "SlideError",
    "SlideNotFoundError",
    "SlideReader",
    "SlideResult",
    "SlideTooLargeError",
    "TileSpec",
    "TilingConfig",
    "TilingError",
    "TissueParams",
    "UnsupportedFormatError",
    "__version__",
    "open_slide",
    "read_coords_file",
    "tile_slide",
    "tile_slides",
]
