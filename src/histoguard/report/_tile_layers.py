"""Overlay layers as map tiles: the per-tile scores of a prediction painted into transparent
PNG tiles for a zoomable viewer, and the legend (colours, ticks, units) each layer is read by.

The layers use the colormaps and scales of the PNG heatmaps (:mod:`histoguard.report._heatmaps`):
attention by rank within the slide, tile uncertainty by value on 0..ln C. The slide-level
verdicts (conformal-set size, abstention, the out-of-distribution gate) have one value per
slide: they are painted over every tile of the slide, so the layer shows where the model looked
and what it concluded about the whole slide, never a per-tile verdict it did not make.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from numpy.typing import ArrayLike
from PIL import Image

from histoguard.report._heatmaps import _RANK_CAPTIONS, _RANK_TICKS, _png_bytes, rank_normalise
from histoguard.report._overlay import Colormap, colormap_lut, tile_shade

LayerName = Literal["attention", "probability", "uncertainty", "set_size", "abstention", "ood"]

#: Every overlay layer, in the order a viewer lists them.
LAYER_NAMES: tuple[LayerName, ...] = (
    "attention", "probability", "uncertainty", "set_size", "abstention", "ood",
)  # fmt: skip

#: Opacity (0-255) of a painted pixel; the viewer's opacity slider scales the whole layer.
_PAINTED_ALPHA = 255


@dataclass(frozen=True)
class LayerStyle:
    """How one overlay layer turns values into colours, and the words under its colour bar.

    Attributes:
        name: the layer (one of :data:`LAYER_NAMES`).
        title: what the layer shows, with its unit.
        scope: ``"tile"`` (one value per tile) or ``"slide"`` (the slide's value on every tile).
        colormap: ``"turbo"`` or ``"viridis"``.
        low, high: the values painted with the colormap's two ends (ignored when ``by_rank``).
        by_rank: scale by rank within the slide (attention), not by value.
        ticks: ``(position in [0, 1], label)`` marks under the colour bar.
        captions: ``(low end, scale name, high end)``.
    """

    name: LayerName
    title: str
    scope: Literal["tile", "slide"]
    colormap: Colormap
    low: float
    high: float
    by_rank: bool
    ticks: tuple[tuple[float, str], ...]
    captions: tuple[str, str, str]

    def scale(self, values: ArrayLike) -> npt.NDArray[np.float64]:
        """``(N,)`` values in the layer's unit → ``(N,)`` in [0, 1] (NaN stays NaN)."""
        v = np.asarray(values, dtype=np.float64)
        if self.by_rank:
            return rank_normalise(v)
        with np.errstate(invalid="ignore"):
            return np.clip((v - self.low) / (self.high - self.low), 0.0, 1.0)

    def legend(self, n_stops: int = 16) -> dict[str, object]:
        """The colour bar as JSON: ``colors`` (hex, low to high), ``ticks``, ``captions``."""
        lut = colormap_lut(self.colormap, n_stops)
        return {
            "name": self.name, "title": self.title, "scope": self.scope,
            "colors": ["#{:02x}{:02x}{:02x}".format(*map(int, rgb)) for rgb in lut],
            "ticks": [[position, label] for position, label in self.ticks],
            "captions": list(self.captions),
        }  # fmt: skip


def _even_ticks(labels: Sequence[str]) -> tuple[tuple[float, str], ...]:
    steps = np.linspace(0.0, 1.0, len(labels))
    return tuple((float(t), label) for t, label in zip(steps, labels, strict=True))


def layer_style(name: LayerName, classes: Sequence[str], positive: str) -> LayerStyle:
    """The style of overlay ``name`` for a model predicting ``classes``.

    Args:
        name: one of :data:`LAYER_NAMES`.
        classes: the model's class names (C of them, at least 2).
        positive: the class whose per-tile probability the ``probability`` layer shows.

    Raises:
        ValueError: an unknown layer, or fewer than 2 classes.
    """
    n = len(classes)
    if n < 2:
        raise ValueError(f"need at least 2 classes, got {list(classes)}")
    ln_c = float(np.log(n))
    styles = {
        "attention": LayerStyle(
            "attention", "attention rank within the slide (0 = lowest, 1 = highest)", "tile",
            "turbo", 0.0, 1.0, True, _RANK_TICKS, _RANK_CAPTIONS,
        ),
        "probability": LayerStyle(
            "probability", f"probability of {positive}, each tile alone (0..1, uncalibrated)",
            "tile", "turbo", 0.0, 1.0, False,
            tuple((t, f"{t:g}") for t in (0.0, 0.25, 0.5, 0.75, 1.0)),
            (f"not {positive}", f"p({positive})", positive),
        ),
        "uncertainty": LayerStyle(
            "uncertainty", f"predictive entropy of each tile (nats, 0..ln {n})", "tile",
            "viridis", 0.0, ln_c, False,
            tuple((t, f"{t * ln_c:.2f}") for t in (0.0, 0.25, 0.5, 0.75, 1.0)),
            ("certain", f"predictive entropy (nats), 0..ln {n}", "uncertain"),
        ),
        "set_size": LayerStyle(
            "set_size", f"conformal prediction-set size of the slide (classes, 0..{n})",
            "slide", "viridis", 0.0, float(n), False,
            _even_ticks([str(k) for k in range(n + 1)]),
            ("empty set", "classes in the set", f"all {n}"),
        ),
        "abstention": LayerStyle(
            "abstention", "the slide's decision (0 = decided, 1 = sent to review)", "slide",
            "turbo", 0.0, 1.0, False, ((0.0, "decided"), (1.0, "review")),
            ("decided", "abstention", "review"),
        ),
        "ood": LayerStyle(
            "ood", "out-of-distribution gate of the slide (0 = in, 1 = out of distribution)",
            "slide", "turbo", 0.0, 1.0, False, ((0.0, "in"), (1.0, "out")),
            ("in distribution", "OOD gate", "out of distribution"),
        ),
    }  # fmt: skip
    if name not in styles:
        raise ValueError(f"unknown layer {name!r}; choose from {list(LAYER_NAMES)}")
    return styles[name]


def layer_tile(
    coords: ArrayLike,
    tile_size0: float,
    level: ArrayLike,
    *,
    origin: tuple[float, float],
    downsample: float,
    size: tuple[int, int],
    colormap: Colormap = "turbo",
) -> npt.NDArray[np.uint8]:
    """Paint the tiles' values, scaled to [0, 1], into one transparent map tile.

    Args:
        coords: ``(N, 2)`` level-0 (x, y) top-left corners of the scored tiles.
        tile_size0: their side in level-0 pixels.
        level: ``(N,)`` values in [0, 1] (see :meth:`LayerStyle.scale`); NaN is not painted.
        origin: level-0 (x, y) of the map tile's top-left pixel.
        downsample: level-0 pixels per map-tile pixel (> 0).
        size: ``(width, height)`` of the map tile in pixels.
        colormap: ``"turbo"`` or ``"viridis"``.

    Returns:
        ``(height, width, 4)`` uint8 RGBA: the colour of the tile under each pixel, opaque, and
        fully transparent where no scored tile lies.

    Raises:
        ValueError: a non-positive size or downsample.
    """
    width, height = size
    if width <= 0 or height <= 0 or not downsample > 0 or not tile_size0 > 0:
        raise ValueError("need a positive size, downsample and tile size")
    lut = colormap_lut(colormap)
    shade = tile_shade(
        (height, width), coords, tile_size0, level, len(lut), downsample=downsample, origin=origin
    )
    rgba = np.zeros((height, width, 4), dtype=np.uint8)
    painted = shade >= 0
    rgba[painted, :3] = lut[shade[painted]]
    rgba[painted, 3] = _PAINTED_ALPHA
    return rgba


def png_bytes(rgba: npt.NDArray[np.uint8]) -> bytes:
    """An ``(H, W, 3 or 4)`` uint8 image as PNG bytes (RGBA keeps its transparency)."""
    return _png_bytes(Image.fromarray(np.ascontiguousarray(rgba)))
