"""histoguard: whole-slide-image models that hold up across hospitals, and audits for any encoder.

The public API is re-exported here; implementation modules are private.
"""

from histoguard._version import __version__
from histoguard.core._batch import BatchReport, SlideResult
from histoguard.errors import (
    CorruptSlideError,
    HistoguardError,
    MissingMppError,
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
    tile_slide,
    tile_slides,
)

__all__ = [
    "BatchReport",
    "CorruptSlideError",
    "HistoguardError",
    "MissingMppError",
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
