"""The map style shared by every per-tile overlay: colormaps, the colour bar, the title strip.

:func:`paint_tiles` blends per-tile values already scaled to [0, 1] over a slide thumbnail and
frames the result with a title above and a labelled colour bar below. The attention map (scaled
by rank) and the tile-uncertainty map (scaled by ln C) both go through it, so they look alike
and differ only in their scale, their colormap and the words under the bar.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt
from numpy.typing import ArrayLike
from PIL import Image, ImageDraw, ImageFont

Colormap = Literal["turbo", "viridis"]

#: Colour anchors, RGB in [0, 1], evenly spaced over [0, 1]. Turbo (Google's perceptual
#: replacement for jet: blue = low, red = high) is sampled every 16th entry of its 256-entry
#: table; viridis is matplotlib's at nine even steps. Linear interpolation between anchors is
#: visually indistinguishable from the full tables.
_ANCHORS: dict[str, tuple[tuple[float, float, float], ...]] = {
    "turbo": (
        (0.18995, 0.07176, 0.23217),
        (0.25107, 0.25237, 0.63374),
        (0.27628, 0.42118, 0.89123),
        (0.25862, 0.57958, 0.99876),
        (0.15844, 0.73551, 0.92305),
        (0.09267, 0.86554, 0.76230),
        (0.19659, 0.94901, 0.59466),
        (0.42778, 0.99419, 0.38575),
        (0.64362, 0.98999, 0.23356),
        (0.80473, 0.92452, 0.20459),
        (0.93301, 0.81236, 0.22667),
        (0.99314, 0.67408, 0.20348),
        (0.98360, 0.49291, 0.12849),
        (0.92105, 0.31489, 0.05475),
        (0.81608, 0.18462, 0.01809),
        (0.66449, 0.08436, 0.00424),
        (0.47960, 0.01583, 0.01055),
    ),
    "viridis": (
        (0.26667, 0.00392, 0.32941),
        (0.28235, 0.15686, 0.47059),
        (0.24314, 0.28627, 0.53725),
        (0.19216, 0.40784, 0.55686),
        (0.14902, 0.50980, 0.55686),
        (0.12157, 0.61961, 0.53725),
        (0.20784, 0.71765, 0.47451),
        (0.43137, 0.80784, 0.34510),
        (0.99216, 0.90588, 0.14510),
    ),
}


_BACKGROUND_RGB = (255, 255, 255)
_TEXT_RGB = (0, 0, 0)
_MIN_FONT_PX = 10
_PAD_PX = 4


def colormap_lut(name: Colormap = "turbo", n: int = 256) -> npt.NDArray[np.uint8]:
    """The ``(n, 3)`` uint8 RGB lookup table of a colormap, low to high.

    Raises:
        ValueError: for an unknown colormap name.
    """
    if name not in _ANCHORS:
        raise ValueError(f"unknown colormap {name!r}; choose from {sorted(_ANCHORS)}")
    anchors = np.asarray(_ANCHORS[name], dtype=np.float64)
    at = np.linspace(0.0, 1.0, len(anchors))
    grid = np.linspace(0.0, 1.0, n)
    channels = [np.interp(grid, at, anchors[:, c]) for c in range(3)]
    return np.round(np.stack(channels, axis=1) * 255).astype(np.uint8)


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled scalable font at ``size`` pixels."""
    return ImageFont.load_default(size=max(_MIN_FONT_PX, size))


def _text_room(texts: Sequence[str], width: int) -> float:
    """Pixels left for ``texts`` side by side in ``width`` once padding is taken off."""
    return width - (len(texts) + 1) * 2 * _PAD_PX


def _text_width(texts: Sequence[str], size: int) -> float:
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    return sum(draw.textlength(t, font=_font(size)) for t in texts)


def _fitting_font_size(texts: Sequence[str], width: int, largest: int) -> int:
    """The largest font size (at most ``largest``) at which ``texts`` fit side by side in
    ``width`` pixels with padding between them; never below the legibility floor."""
    size = max(_MIN_FONT_PX, largest)
    room = _text_room(texts, width)
    while size > _MIN_FONT_PX and _text_width(texts, size) > room:
        size -= 1
    return size


def _colorbar(
    width: int,
    height: int,
    lut: npt.NDArray[np.uint8],
    ticks: Sequence[tuple[float, str]],
    captions: tuple[str, str, str],
) -> Image.Image:
    """A strip as wide as the map: the low→high gradient, ``ticks`` (position in [0, 1] along
    the bar, label) marked under it, and the ``(low, middle, high)`` captions below those.

    When the three captions cannot fit side by side even at the smallest legible size, only
    the middle one (the scale's name) is written: overlapping words would say nothing.
    """
    canvas = Image.new("RGB", (width, height), _BACKGROUND_RGB)
    size = _fitting_font_size(captions, width, max(_MIN_FONT_PX, (height - 8) // 4))
    font = _font(size)
    bar_top, bar_h = 2, max(8, height - 2 * size - 18)
    bar_w = max(1, width - 2 * _PAD_PX)
    gradient = lut[np.linspace(0, len(lut) - 1, bar_w).round().astype(int)]
    canvas.paste(Image.fromarray(np.repeat(gradient[None], bar_h, axis=0)), (_PAD_PX, bar_top))
    draw = ImageDraw.Draw(canvas)
    tick_y = bar_top + bar_h
    for tick, label in ticks:
        x = _PAD_PX + tick * (bar_w - 1)
        draw.line((x, tick_y, x, tick_y + 4), fill=_TEXT_RGB, width=1)
        half = draw.textlength(label, font=font) / 2
        left = min(max(x - half, 0), width - 2 * half)
        draw.text((left, tick_y + 5), label, fill=_TEXT_RGB, font=font)
    caption_y = tick_y + 5 + size + 4
    low, middle, high = captions
    centre = (width - draw.textlength(middle, font=font)) / 2
    draw.text((max(centre, 0), caption_y), middle, fill=_TEXT_RGB, font=font)
    if _text_width(captions, size) <= _text_room(captions, width):
        draw.text((_PAD_PX, caption_y), low, fill=_TEXT_RGB, font=font)
        right = width - _PAD_PX - draw.textlength(high, font=font)
        draw.text((right, caption_y), high, fill=_TEXT_RGB, font=font)
    return canvas


def colorbar_height(map_height: int) -> int:
    """Height in pixels of the colour-bar strip that :func:`paint_tiles` appends."""
    return max(56, map_height // 8)


def _title_strip(width: int, title: str) -> Image.Image:
    """A white strip as wide as the map with ``title`` in black, shrunk to fit the width."""
    size = _fitting_font_size([title], width, min(40, max(14, width // 40)))
    strip = Image.new("RGB", (width, size + 2 * _PAD_PX + 4), _BACKGROUND_RGB)
    ImageDraw.Draw(strip).text((_PAD_PX, _PAD_PX), title, fill=_TEXT_RGB, font=_font(size))
    return strip


def title_height(map_width: int, title: str | None) -> int:
    """Height in pixels of the title strip :func:`paint_tiles` puts above the map (0 without
    a title)."""
    return 0 if not title else _title_strip(map_width, title).height


def tile_shade(
    shape: tuple[int, int],
    coords: ArrayLike,
    tile_size0: float,
    level: ArrayLike,
    n_colors: int,
    *,
    downsample: float,
    origin: tuple[float, float] = (0.0, 0.0),
) -> npt.NDArray[np.int16]:
    """Which colour each pixel of a map gets: the LUT index of the tile covering it, or -1.

    Args:
        shape: ``(height, width)`` of the map in pixels.
        coords: ``(N, 2)`` level-0 (x, y) top-left tile corners.
        tile_size0: tile side in level-0 pixels.
        level: ``(N,)`` values in [0, 1]; non-finite ones are not painted.
        n_colors: entries of the lookup table (index 0 = value 0, ``n_colors - 1`` = value 1).
        downsample: level-0 pixels per map pixel.
        origin: level-0 (x, y) of the map's top-left pixel.

    Returns:
        ``(height, width)`` int16. Every tile that touches the map covers at least one pixel;
        where tiles overlap, the higher value shows.
    """
    height, width = shape
    xy = np.asarray(coords, dtype=np.float64).reshape(-1, 2) - np.asarray(origin, np.float64)
    value = np.asarray(level, dtype=np.float64)
    shade = np.full((height, width), -1, dtype=np.int16)
    start, stop = xy / downsample, (xy + tile_size0) / downsample
    touches = (
        np.isfinite(value)
        & (stop[:, 0] > 0) & (stop[:, 1] > 0) & (start[:, 0] < width) & (start[:, 1] < height)
    )  # fmt: skip
    # Ascending order: with overlapping tiles the later (higher) value is the one left visible.
    order = np.flatnonzero(touches)[np.argsort(value[touches], kind="stable")]
    corners = np.clip(np.round(start[order]).astype(np.int64), 0, None)
    ends = np.maximum(np.round(stop[order]).astype(np.int64), corners + 1)
    lut_index = np.round(value[order] * (n_colors - 1)).astype(np.int16)
    for (x0, y0), (x1, y1), index in zip(
        corners.tolist(), ends.tolist(), lut_index.tolist(), strict=True
    ):
        shade[y0:y1, x0:x1] = index
    return shade


def paint_tiles(
    thumbnail: np.ndarray,
    downsample: float,
    coords: ArrayLike,
    tile_size0: float,
    level: ArrayLike,
    *,
    ticks: Sequence[tuple[float, str]],
    captions: tuple[str, str, str],
    alpha: float = 0.5,
    colormap: Colormap = "turbo",
    title: str | None = None,
) -> Image.Image:
    """Paint each tile's value, scaled to [0, 1], over a slide thumbnail, with a colour bar.

    Args:
        thumbnail: ``(H, W, 3)`` uint8 RGB (e.g. :attr:`Thumbnail.image`).
        downsample: level-0 pixels per thumbnail pixel.
        coords: ``(N, 2)`` level-0 (x, y) top-left tile corners.
        tile_size0: tile side in level-0 pixels.
        level: ``(N,)`` values in [0, 1] (0 = the colormap's low end); tiles with a non-finite
            value are not painted.
        ticks: ``(position in [0, 1], label)`` marks under the colour bar.
        captions: ``(low end, scale name, high end)`` written under the ticks.
        alpha: opacity of the colour over the tissue, in [0, 1].
        colormap: ``"turbo"`` (jet-like, low blue → high dark red) or ``"viridis"``.
        title: a line above the map.

    Returns:
        An RGB image ``W`` wide and ``title_height(W, title) + H + colorbar_height(H)`` tall:
        the title, the map, and the colour bar below it. Where tiles overlap, the higher value
        shows.

    Raises:
        ValueError: on inconsistent shapes, a non-positive downsample or tile size, alpha
            outside [0, 1], or a finite value outside [0, 1].
    """
    image = np.asarray(thumbnail)
    xy = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    value = np.asarray(level, dtype=np.float64)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"thumbnail must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    if value.shape != (len(xy),):
        raise ValueError(f"scores must have shape ({len(xy)},), got {value.shape}")
    if not (downsample > 0 and tile_size0 > 0 and 0.0 <= alpha <= 1.0):
        raise ValueError("need downsample > 0, tile_size0 > 0 and 0 <= alpha <= 1")
    finite = np.isfinite(value)
    if np.any((value[finite] < 0.0) | (value[finite] > 1.0)):
        raise ValueError("tile values to paint must lie in [0, 1]")
    lut = colormap_lut(colormap)
    height, width = image.shape[:2]
    shade = tile_shade((height, width), xy, tile_size0, value, len(lut), downsample=downsample)
    painted = shade >= 0
    blended = image.astype(np.float64)
    blended[painted] = (1 - alpha) * blended[painted] + alpha * lut[shade[painted]]
    heatmap = Image.fromarray(np.round(blended).astype(np.uint8))
    top = title_height(width, title)
    bar_height = colorbar_height(height)
    out = Image.new("RGB", (width, top + height + bar_height), _BACKGROUND_RGB)
    if title:
        out.paste(_title_strip(width, title), (0, 0))
    out.paste(heatmap, (0, top))
    out.paste(_colorbar(width, bar_height, lut, ticks, captions), (0, top + height))
    return out
