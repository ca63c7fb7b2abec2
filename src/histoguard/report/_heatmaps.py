"""Attention maps people can open: a coloured overlay PNG, a top-tile gallery, QuPath GeoJSON.

Scores are shown by *rank*, not by value: MIL attention is a softmax, so a handful of tiles hold
most of the mass and a min–max scale would paint everything else the bottom colour. With ranks
every colour of the map is used and "red" always means "the top few percent of this slide".
The raw scores still travel in the GeoJSON for anyone who needs them.

:func:`write_prediction_heatmaps` draws what :func:`histoguard.mil.predict` returned: it reads
results and never runs a model. It draws only what it can draw truthfully: without the tiles'
size in level-0 pixels there is no map, and without the slide there is no overlay (the
GeoJSON, which needs no pixels, is still written); each case is a warning naming the fix.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import numpy.typing as npt
from numpy.typing import ArrayLike
from PIL import Image, ImageDraw, ImageFont
from scipy.stats import rankdata

from histoguard.core._atomic import write_bytes_atomic
from histoguard.slide._geojson import tile_geojson

if TYPE_CHECKING:
    from histoguard.mil import SlidePrediction

logger = logging.getLogger(__name__)

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
_GALLERY_GAP_PX = 4


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


def rank_normalise(scores: ArrayLike) -> npt.NDArray[np.float64]:
    """``(N,)`` scores → ``(N,)`` values in [0, 1] by rank: lowest 0, highest 1, ties averaged.

    A single finite score maps to 1; non-finite scores stay NaN and are left out of the ranking.
    """
    s = np.asarray(scores, dtype=np.float64)
    out = np.full(s.shape, np.nan)
    finite = np.isfinite(s)
    n = int(finite.sum())
    if n == 1:
        out[finite] = 1.0
    elif n > 1:
        out[finite] = (rankdata(s[finite]) - 1) / (n - 1)
    return out


def top_tile_indices(scores: ArrayLike, k: int) -> npt.NDArray[np.int64]:
    """Indices of the ``k`` highest finite scores, highest first (ties: lower index first).

    Use it to read the tiles passed to :func:`top_tiles_gallery` and :func:`write_heatmaps`.
    """
    s = np.asarray(scores, dtype=np.float64)
    finite = np.flatnonzero(np.isfinite(s))
    order = finite[np.argsort(-s[finite], kind="stable")]
    return order[: max(k, 0)].astype(np.int64)


_TEXT_RGB = (0, 0, 0)
_MIN_FONT_PX = 10
_PAD_PX = 4
#: Colour-bar tick positions (attention rank) and the captions under its two ends.
_TICKS = (0.0, 0.25, 0.5, 0.75, 1.0)
_CAPTIONS = ("low attention", "attention rank", "high attention")


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled scalable font at ``size`` pixels."""
    return ImageFont.load_default(size=max(_MIN_FONT_PX, size))


def _fitting_font_size(texts: Sequence[str], width: int, largest: int) -> int:
    """The largest font size (at most ``largest``) at which ``texts`` fit side by side in
    ``width`` pixels with padding between them; never below the legibility floor."""
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    size = max(_MIN_FONT_PX, largest)
    room = width - (len(texts) + 1) * 2 * _PAD_PX
    while size > _MIN_FONT_PX and sum(draw.textlength(t, font=_font(size)) for t in texts) > room:
        size -= 1
    return size


def _colorbar(width: int, height: int, lut: npt.NDArray[np.uint8]) -> Image.Image:
    """A strip as wide as the map: the low→high gradient, ticks labelled with the attention
    rank (0, 0.25, ..., 1), and "low attention" / "attention rank" / "high attention" below."""
    canvas = Image.new("RGB", (width, height), _BACKGROUND_RGB)
    size = _fitting_font_size(_CAPTIONS, width, max(_MIN_FONT_PX, (height - 8) // 4))
    font = _font(size)
    bar_top, bar_h = 2, max(8, height - 2 * size - 18)
    bar_w = max(1, width - 2 * _PAD_PX)
    gradient = lut[np.linspace(0, len(lut) - 1, bar_w).round().astype(int)]
    canvas.paste(Image.fromarray(np.repeat(gradient[None], bar_h, axis=0)), (_PAD_PX, bar_top))
    draw = ImageDraw.Draw(canvas)
    tick_y = bar_top + bar_h
    for tick in _TICKS:
        x = _PAD_PX + tick * (bar_w - 1)
        draw.line((x, tick_y, x, tick_y + 4), fill=_TEXT_RGB, width=1)
        label = f"{tick:g}"
        half = draw.textlength(label, font=font) / 2
        left = min(max(x - half, 0), width - 2 * half)
        draw.text((left, tick_y + 5), label, fill=_TEXT_RGB, font=font)
    caption_y = tick_y + 5 + size + 4
    low, middle, high = _CAPTIONS
    draw.text((_PAD_PX, caption_y), low, fill=_TEXT_RGB, font=font)
    centre = (width - draw.textlength(middle, font=font)) / 2
    draw.text((centre, caption_y), middle, fill=_TEXT_RGB, font=font)
    right = width - _PAD_PX - draw.textlength(high, font=font)
    draw.text((right, caption_y), high, fill=_TEXT_RGB, font=font)
    return canvas


def colorbar_height(map_height: int) -> int:
    """Height in pixels of the colour-bar strip that :func:`attention_overlay` appends."""
    return max(56, map_height // 8)


def _title_strip(width: int, title: str) -> Image.Image:
    """A white strip as wide as the map with ``title`` in black, shrunk to fit the width."""
    size = _fitting_font_size([title], width, min(40, max(14, width // 40)))
    strip = Image.new("RGB", (width, size + 2 * _PAD_PX + 4), _BACKGROUND_RGB)
    ImageDraw.Draw(strip).text((_PAD_PX, _PAD_PX), title, fill=_TEXT_RGB, font=_font(size))
    return strip


def title_height(map_width: int, title: str | None) -> int:
    """Height in pixels of the title strip :func:`attention_overlay` puts above the map (0
    without a title)."""
    return 0 if not title else _title_strip(map_width, title).height


def attention_overlay(
    thumbnail: np.ndarray,
    downsample: float,
    coords: ArrayLike,
    tile_size0: float,
    scores: ArrayLike,
    *,
    alpha: float = 0.5,
    colormap: Colormap = "turbo",
    title: str | None = None,
) -> Image.Image:
    """Paint each tile's rank-normalised attention over a slide thumbnail, with a colour bar.

    Args:
        thumbnail: ``(H, W, 3)`` uint8 RGB (e.g. :attr:`Thumbnail.image`).
        downsample: level-0 pixels per thumbnail pixel.
        coords: ``(N, 2)`` level-0 (x, y) top-left tile corners.
        tile_size0: tile side in level-0 pixels.
        scores: ``(N,)`` attention scores; tiles with a non-finite score are not painted.
        alpha: opacity of the colour over the tissue, in [0, 1].
        colormap: ``"turbo"`` (jet-like, low blue → high dark red) or ``"viridis"``.
        title: a line above the map (e.g. the slide, its predicted class and probability).

    Returns:
        An RGB image ``W`` wide and ``title_height(W, title) + H + colorbar_height(H)`` tall:
        the title, the map, and the colour bar (attention rank 0 → 1, labelled ticks) below it.
        Where tiles overlap, the higher score shows.

    Raises:
        ValueError: on inconsistent shapes, a non-positive downsample or tile size, or alpha
            outside [0, 1].
    """
    image = np.asarray(thumbnail)
    xy = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    level = rank_normalise(scores)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"thumbnail must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    if level.shape != (len(xy),):
        raise ValueError(f"scores must have shape ({len(xy)},), got {level.shape}")
    if not (downsample > 0 and tile_size0 > 0 and 0.0 <= alpha <= 1.0):
        raise ValueError("need downsample > 0, tile_size0 > 0 and 0 <= alpha <= 1")
    lut = colormap_lut(colormap)
    height, width = image.shape[:2]
    # Paint a map of LUT indices (-1 = no tile) first, so colours are blended once per pixel.
    shade = np.full((height, width), -1, dtype=np.int16)
    corners = np.clip(np.round(xy / downsample).astype(np.int64), 0, None)
    ends = np.maximum(np.round((xy + tile_size0) / downsample).astype(np.int64), corners + 1)
    n_finite = int(np.isfinite(level).sum())
    # Ascending order: with overlapping tiles the later (higher) score is the one left visible.
    order = np.argsort(level, kind="stable")[:n_finite]
    lut_index = np.round(level[order] * (len(lut) - 1)).astype(np.int16)
    for (x0, y0), (x1, y1), value in zip(
        corners[order].tolist(), ends[order].tolist(), lut_index.tolist(), strict=True
    ):
        shade[y0:y1, x0:x1] = value
    painted = shade >= 0
    blended = image.astype(np.float64)
    blended[painted] = (1 - alpha) * blended[painted] + alpha * lut[shade[painted]]
    heatmap = Image.fromarray(np.round(blended).astype(np.uint8))
    top = title_height(width, title)
    out = Image.new("RGB", (width, top + height + colorbar_height(height)), _BACKGROUND_RGB)
    if title:
        out.paste(_title_strip(width, title), (0, 0))
    out.paste(heatmap, (0, top))
    out.paste(_colorbar(width, colorbar_height(height), lut), (0, top + height))
    return out


def top_tiles_gallery(
    tiles: np.ndarray, scores: ArrayLike, *, columns: int = 8, label: bool = True
) -> Image.Image:
    """A grid of tiles ordered by score, highest first, left to right then top to bottom.

    Args:
        tiles: ``(K, S, S, 3)`` uint8 RGB tiles.
        scores: ``(K,)`` their scores; non-finite scores go last.
        columns: tiles per row (fewer when K is smaller).
        label: write "#rank: score" in the top-left corner of each tile.

    Returns:
        An RGB image of ``min(K, columns)`` by ``ceil(K / columns)`` cells of ``S`` pixels with
        a 4-pixel white gap around every cell.

    Raises:
        ValueError: if there are no tiles, shapes disagree, or columns < 1.
    """
    stack = np.asarray(tiles)
    s = np.asarray(scores, dtype=np.float64)
    if stack.ndim != 4 or stack.shape[3] != 3 or stack.shape[0] == 0 or stack.dtype != np.uint8:
        raise ValueError(f"tiles must be (K>0, S, S, 3) uint8, got {stack.shape} {stack.dtype}")
    if s.shape != (stack.shape[0],) or columns < 1:
        raise ValueError(f"need scores of shape ({stack.shape[0]},) and columns >= 1")
    order = np.r_[top_tile_indices(s, len(s)), np.flatnonzero(~np.isfinite(s))]
    n_cols = min(columns, len(order))
    n_rows = -(-len(order) // n_cols)
    tile_h, tile_w = stack.shape[1:3]
    gap = _GALLERY_GAP_PX
    grid = Image.new(
        "RGB", (gap + n_cols * (tile_w + gap), gap + n_rows * (tile_h + gap)), _BACKGROUND_RGB
    )
    draw = ImageDraw.Draw(grid)
    for rank, i in enumerate(order):
        x = gap + (rank % n_cols) * (tile_w + gap)
        y = gap + (rank // n_cols) * (tile_h + gap)
        grid.paste(Image.fromarray(stack[i]), (x, y))
        if label:
            text = f"#{rank + 1}: {s[i]:.3g}"
            # A dark box under the text keeps it legible on any tissue colour.
            *_, right, bottom = draw.textbbox((x + 2, y + 2), text)
            draw.rectangle((x, y, right + 2, bottom + 2), fill=(0, 0, 0))
            draw.text((x + 2, y + 2), text, fill=(255, 255, 255))
    return grid


def attention_geojson(
    coords: ArrayLike, tile_size0: float, scores: ArrayLike, *, name: str = "attention"
) -> dict[str, object]:
    """A QuPath measurement map: one tile per coordinate with its attention.

    Args:
        coords: ``(N, 2)`` level-0 (x, y) top-left tile corners.
        tile_size0: tile side in level-0 pixels.
        scores: ``(N,)`` attention scores.
        name: measurement name.

    Returns:
        A GeoJSON FeatureCollection (see :func:`~histoguard.slide._geojson.tile_geojson`) whose
        tiles carry ``name`` (the raw score) and ``"<name> rank"`` (in [0, 1], the scale of the
        PNG overlay; QuPath colours measurement maps min–max, so the rank reproduces the PNG).
    """
    s = np.asarray(scores, dtype=np.float64)
    return tile_geojson(coords, tile_size0, {name: s, f"{name} rank": rank_normalise(s)})


def _blank_canvas(
    coords: ArrayLike, tile_size0: float, downsample: float, max_size: int = 2048
) -> tuple[npt.NDArray[np.uint8], float]:
    """A white stand-in thumbnail covering every tile, and its downsample."""
    xy = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    extent = (xy.max(axis=0) + tile_size0) if len(xy) else np.array([tile_size0, tile_size0])
    downsample = max(downsample, float(extent.max()) / max_size)
    width, height = np.ceil(extent / downsample).astype(int)
    return np.full((max(height, 1), max(width, 1), 3), 255, dtype=np.uint8), downsample


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_heatmaps(
    out_dir: Path,
    slide_stem: str,
    *,
    thumbnail: np.ndarray | None,
    downsample: float,
    coords: ArrayLike,
    tile_size0: float,
    scores: ArrayLike,
    top_tiles: np.ndarray | None = None,
    title: str | None = None,
) -> dict[str, Path]:
    """Write a slide's attention overlay, QuPath GeoJSON and (optionally) top-tile gallery.

    Each file is written atomically (see :mod:`histoguard.core._atomic`): a file present under its
    final name is complete.

    Args:
        out_dir: output folder, created if missing.
        slide_stem: file-name stem of the slide.
        thumbnail, downsample, coords, tile_size0, scores: as for :func:`attention_overlay`.
            Without a thumbnail (the slide could not be opened) the map is drawn on white,
            at a downsample raised so that its longest side is at most 2048 pixels.
        top_tiles: ``(K, S, S, 3)`` uint8 pixels of the tiles at
            ``top_tile_indices(scores, K)``, in that order (highest score first).
        title: a line above the overlay (see :func:`attention_overlay`).

    Returns:
        ``{"attention": <stem>.attention.png, "geojson": <stem>.attention.geojson}`` plus
        ``"top_tiles": <stem>.top_tiles.png`` when tiles were given.
    """
    s = np.asarray(scores, dtype=np.float64)
    paths = {
        "attention": out_dir / f"{slide_stem}.attention.png",
        "geojson": out_dir / f"{slide_stem}.attention.geojson",
    }
    if thumbnail is None:
        thumbnail, downsample = _blank_canvas(coords, tile_size0, downsample)
    overlay = attention_overlay(thumbnail, downsample, coords, tile_size0, s, title=title)
    write_bytes_atomic(paths["attention"], _png_bytes(overlay))
    _write_geojson(paths["geojson"], coords, tile_size0, s)
    if top_tiles is not None:
        k = len(top_tiles)
        gallery = top_tiles_gallery(top_tiles, s[top_tile_indices(s, k)], columns=8)
        paths["top_tiles"] = out_dir / f"{slide_stem}.top_tiles.png"
        write_bytes_atomic(paths["top_tiles"], _png_bytes(gallery))
    return paths


def _write_geojson(path: Path, coords: ArrayLike, tile_size0: float, scores: ArrayLike) -> None:
    geojson = attention_geojson(coords, tile_size0, scores)
    write_bytes_atomic(path, json.dumps(geojson, allow_nan=False).encode())


@dataclass(frozen=True)
class PredictionHeatmaps:
    """What :func:`write_prediction_heatmaps` wrote.

    Attributes:
        paths: slide -> ``{"attention", "geojson", "top_tiles"}`` -> file, for the files
            written (a slide that got none is absent).
        warnings: why something was not drawn (also logged).
    """

    paths: dict[str, dict[str, Path]]
    warnings: tuple[str, ...]


def prediction_title(prediction: SlidePrediction) -> str:
    """``"<slide>: predicted <class> (p = 0.93)"``."""
    probability = prediction.probabilities[prediction.predicted]
    return f"{prediction.slide}: predicted {prediction.predicted} (p = {probability:.2f})"


def write_prediction_heatmaps(
    predictions: Sequence[SlidePrediction], out_dir: str | Path, *, top_k: int = 16
) -> PredictionHeatmaps:
    """Draw the attention of :func:`histoguard.mil.predict`'s results.

    Per slide with attention and coordinates: ``<slide>.attention.png`` (the overlay on the
    slide's thumbnail, titled with the predicted class and its probability, with a colour bar),
    ``<slide>.attention.geojson`` (QuPath measurement map) and ``<slide>.top_tiles.png`` (the
    ``top_k`` tiles, for histoguard feature files whose slide opens).

    Nothing is drawn from a guess: a slide whose tile size in level-0 pixels is unknown gets no
    files, and one whose slide cannot be reopened gets the GeoJSON only; both are warnings
    (logged and returned) naming the feature file and the fix.

    Args:
        predictions: what :func:`histoguard.mil.predict` returned.
        out_dir: output folder, created if missing.
        top_k: tiles in the gallery.

    Returns:
        The files written and the warnings.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, dict[str, Path]] = {}
    warnings: list[str] = []
    for prediction in predictions:
        written, problem = _draw_prediction(prediction, out, top_k)
        if written:
            paths[prediction.slide] = written
        if problem:
            logger.warning("%s", problem)
            warnings.append(problem)
    return PredictionHeatmaps(paths=paths, warnings=tuple(warnings))


def _draw_prediction(
    prediction: SlidePrediction, out: Path, top_k: int
) -> tuple[dict[str, Path], str]:
    """One slide's heatmap files, and a warning ("" when everything was drawn)."""
    from histoguard.errors import SlideError
    from histoguard.slide import TileSpec, open_slide, read_tiles

    source = prediction.feature_file or prediction.slide
    if prediction.attention is None:
        return {}, ""  # a model without attention: nothing to draw, nothing wrong
    if prediction.coords is None:
        return {}, f"{source}: no heatmap: the feature file has no tile coordinates"
    if prediction.slide_path is not None and Path(prediction.slide_path).is_dir():
        return {}, (
            f"{source}: no heatmap: its tiles came from the tile folder {prediction.slide_path}, "
            "which has no slide to draw on; tile slides with `histoguard tile` for heatmaps"
        )
    if prediction.tile_size0 is None:
        return {}, (
            f"{source}: no heatmap: the feature file does not say how large its tiles are in "
            "level-0 pixels (patch_size_level0, level0_tile_size, or CLAM's patch_size with "
            "patch_level 0 or a known downsample). Pass the slide (--slide / slides=) so its "
            "level downsample can be read, or extract the features with histoguard"
        )
    scores = np.asarray(prediction.attention, dtype=np.float64)
    coords, size0 = prediction.coords, prediction.tile_size0
    attrs = prediction.attrs
    geojson = out / f"{prediction.slide}.attention.geojson"
    slide_path = prediction.slide_path
    mpp = attrs.get("slide_mpp")
    try:
        if slide_path is None:
            raise FileNotFoundError("the feature file does not record its slide")
        with open_slide(
            slide_path, mpp_override=None if mpp is None else float(mpp), require_mpp=False
        ) as slide:
            thumbnail = slide.get_thumbnail(2048)
            top_tiles = None
            try:
                spec = TileSpec.from_attrs(attrs)
            except KeyError:
                spec = None  # another tool's file: no tile spec to read the gallery with
            if spec is not None:
                best = top_tile_indices(scores, top_k)
                reads = sorted(read_tiles(slide, spec, coords[best]), key=lambda r: r.index)
                # The gallery pairs tiles with scores by position: only draw it when all read.
                tiles = [r.tile for r in reads if r.tile is not None]
                if tiles and len(tiles) == len(reads):
                    top_tiles = np.stack(tiles)
    except (SlideError, OSError, ValueError) as error:
        _write_geojson(geojson, coords, size0, scores)
        where = slide_path if slide_path is not None else "(unknown)"
        return {"geojson": geojson}, (
            f"{source}: attention overlay not drawn: cannot reopen the slide {where} ({error}); "
            f"wrote {geojson.name} only. Pass the slide (--slide / slides=) to draw the overlay"
        )
    written = write_heatmaps(
        out, prediction.slide, thumbnail=thumbnail.image, downsample=thumbnail.downsample,
        coords=coords, tile_size0=size0, scores=scores, top_tiles=top_tiles,
        title=prediction_title(prediction),
    )  # fmt: skip
    return written, ""
