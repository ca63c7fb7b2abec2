"""Slide I/O and the slide-level algorithms: readers, tissue detection, tiling.

Coordinates are level-0 pixels everywhere; scale is micrometres per pixel (mpp).
"""

# Imported for their registration side effect: each back-end module registers one back-end
# (the registry itself imports none of them).
from histoguard.slide import _openslide_backend, _tiffslide_backend  # noqa: F401
from histoguard.slide._array_backend import ArraySlide, ImageSlide
from histoguard.slide._coords_file import CoordsFile, read_coords_file, write_coords_file
from histoguard.slide._geojson import tile_geojson, tissue_geojson
from histoguard.slide._inputs import find_slides
from histoguard.slide._open import open_slide, slide_info
from histoguard.slide._preflight import DEFAULT_MAX_PIXELS, FileKind, PreflightResult, preflight
from histoguard.slide._reader import SlideReader
from histoguard.slide._registry import BackendInfo, get_backend, list_backends, register_backend
from histoguard.slide._synthetic import Ellipse, Rectangle, write_synthetic_slide
from histoguard.slide._tile_folder import TILE_IMAGE_EXTENSIONS, TileFolder, is_tile_folder
from histoguard.slide._tile_job import TilingConfig, tile_slide, tile_slides
from histoguard.slide._tile_reader import TileRead, read_tiles
from histoguard.slide._tiling import TileSpec, tile_grid
from histoguard.slide._tissue import Polygon, TissueMask, TissueParams, detect_tissue, pen_mask

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "TILE_IMAGE_EXTENSIONS",
    "ArraySlide",
    "BackendInfo",
    "CoordsFile",
    "Ellipse",
    "FileKind",
    "ImageSlide",
    "Polygon",
    "PreflightResult",
    "Rectangle",
    "SlideReader",
    "TileFolder",
    "TileRead",
    "TileSpec",
    "TilingConfig",
    "TissueMask",
    "TissueParams",
    "detect_tissue",
    "find_slides",
    "get_backend",
    "is_tile_folder",
    "list_backends",
    "open_slide",
    "pen_mask",
    "preflight",
    "read_coords_file",
    "read_tiles",
    "register_backend",
    "slide_info",
    "tile_geojson",
    "tile_grid",
    "tile_slide",
    "tile_slides",
    "tissue_geojson",
    "write_coords_file",
    "write_synthetic_slide",
]
