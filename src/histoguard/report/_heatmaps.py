"""Attention maps people can open: a coloured overlay PNG, a top-tile gallery, QuPath GeoJSON,
and beside them the map of each tile's uncertainty.

Attention is shown by *rank*, not by value: MIL attention is a softmax, so a handful of tiles
hold most of the mass and a min–max scale would paint everything else the bottom colour. With
ranks every colour of the map is used and "red" always means "the top few percent of this
slide". The raw scores still travel in the GeoJSON for anyone who needs them. Tile uncertainty
(predictive entropy) is shown by *value* on 0..ln C: it means the same on every slide.

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
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from numpy.typing import ArrayLike
from PIL import Image, ImageDraw

from histoguard.core._atomic import write_bytes_atomic
from histoguard.core._names import bounded_stem
from histoguard.core._privacy import scrub_slide
from histoguard.report._overlay import _BACKGROUND_RGB, Colormap, paint_tiles
from histoguard.report._titles import prediction_title, uncertainty_title
from histoguard.slide._geojson import tile_geojson

if TYPE_CHECKING:
    from histoguard.mil import SlidePrediction

logger = logging.getLogger(__name__)

_GALLERY_GAP_PX = 4


def rank_normalise(scores: ArrayLike) -> npt.NDArray[np.float64]:
    """``(N,)`` scores → ``(N,)`` values in [0, 1] by rank: lowest 0, highest 1, ties averaged.

    A single finite score maps to 1; non-finite scores stay NaN and are left out of the ranking.
    """
    from scipy.stats import rankdata  # ~1 s of import: on first use, not with histoguard

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


#: Colour-bar tick positions (attention rank) and the captions under its two ends.
_RANK_TICKS = tuple((t, f"{t:g}") for t in (0.0, 0.25, 0.5, 0.75, 1.0))
_RANK_CAPTIONS = ("low attention", "attention rank", "high attention")


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
        title: a line above the map (e.g. the slide and its decision, see
            :func:`~histoguard.report._titles.prediction_title`).

    Returns:
        An RGB image ``W`` wide and ``title_height(W, title) + H + colorbar_height(H)`` tall:
        the title, the map, and the colour bar (attention rank 0 → 1, labelled ticks) below it.
        Where tiles overlap, the higher score shows.

    Raises:
        ValueError: on inconsistent shapes, a non-positive downsample or tile size, or alpha
            outside [0, 1].
    """
    level = rank_normalise(scores)
    return paint_tiles(
        thumbnail, downsample, coords, tile_size0, level, ticks=_RANK_TICKS,
        captions=_RANK_CAPTIONS, alpha=alpha, colormap=colormap, title=title,
    )  # fmt: skip


#: Where the tile-uncertainty colour bar is ticked, as fractions of ln C.
_ENTROPY_TICKS = (0.0, 0.25, 0.5, 0.75, 1.0)
#: The GeoJSON measurement holding each tile's predictive entropy.
UNCERTAINTY_MEASUREMENT = "predictive entropy (nats)"


def uncertainty_overlay(
    thumbnail: np.ndarray,
    downsample: float,
    coords: ArrayLike,
    tile_size0: float,
    entropy: ArrayLike,
    n_classes: int,
    *,
    alpha: float = 0.5,
    colormap: Colormap = "viridis",
    title: str | None = None,
) -> Image.Image:
    """Paint each tile's predictive entropy over a slide thumbnail, on the fixed scale 0..ln C.

    Unlike attention, entropy means the same on every slide (0: the models agree on one class
    with certainty; ln C: uniform over the C classes), so it is drawn by value, not by rank: a
    slide whose tiles are all uncertain looks uncertain. Viridis by default, so the map is not
    mistaken for the attention map beside it.

    Args:
        thumbnail, downsample, coords, tile_size0, alpha, title: as for
            :func:`attention_overlay`.
        entropy: ``(N,)`` per-tile predictive entropy in nats, in [0, ln C]
            (``SlidePrediction.tile_uncertainty``); non-finite tiles are not painted.
        n_classes: C, the number of classes (at least 2).
        colormap: ``"viridis"`` or ``"turbo"``.

    Returns:
        An RGB image laid out as :func:`attention_overlay`'s; its colour bar is ticked in nats
        from 0 to ln C and captioned "predictive entropy (nats), 0..ln C".

    Raises:
        ValueError: on the errors of :func:`attention_overlay`, ``n_classes < 2``, or a finite
            entropy below 0 or above ln C (a sign that ``n_classes`` is wrong).
    """
    if n_classes < 2:
        raise ValueError(f"n_classes must be at least 2, got {n_classes}")
    ln_c = float(np.log(n_classes))
    e = np.asarray(entropy, dtype=np.float64)
    finite = e[np.isfinite(e)]
    tolerance = 1e-6 * ln_c  # float32 entropies of a uniform prediction land just above ln C
    if finite.size and (finite.min() < -tolerance or finite.max() > ln_c + tolerance):
        raise ValueError(
            f"tile entropies must lie in [0, ln {n_classes} = {ln_c:.4f}] nats; got "
            f"[{finite.min():.4f}, {finite.max():.4f}]: are there {n_classes} classes?"
        )
    ticks = tuple((t, f"{t * ln_c:.2f}") for t in _ENTROPY_TICKS)
    captions = ("certain", f"predictive entropy (nats), 0..ln {n_classes}", "uncertain")
    return paint_tiles(
        thumbnail, downsample, coords, tile_size0, np.clip(e / ln_c, 0.0, 1.0), ticks=ticks,
        captions=captions, alpha=alpha, colormap=colormap, title=title,
    )  # fmt: skip


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
    coords: ArrayLike,
    tile_size0: float,
    scores: ArrayLike,
    *,
    name: str = "attention",
    tile_uncertainty: ArrayLike | None = None,
) -> dict[str, object]:
    """A QuPath measurement map: one tile per coordinate with its attention (and uncertainty).

    Args:
        coords: ``(N, 2)`` level-0 (x, y) top-left tile corners.
        tile_size0: tile side in level-0 pixels.
        scores: ``(N,)`` attention scores.
        name: measurement name.
        tile_uncertainty: ``(N,)`` per-tile predictive entropy in nats, or None.

    Returns:
        A GeoJSON FeatureCollection (see :func:`~histoguard.slide._geojson.tile_geojson`) whose
        tiles carry ``name`` (the raw score) and ``"<name> rank"`` (in [0, 1], the scale of the
        PNG overlay; QuPath colours measurement maps min–max, so the rank reproduces the PNG),
        and with ``tile_uncertainty`` also ``"predictive entropy (nats)"``
        (:data:`UNCERTAINTY_MEASUREMENT`; set QuPath's display range to 0..ln C to match the
        uncertainty PNG).

    Raises:
        ValueError: if a value array is not ``(N,)`` (see ``tile_geojson``).
    """
    s = np.asarray(scores, dtype=np.float64)
    values = {name: s, f"{name} rank": rank_normalise(s)}
    if tile_uncertainty is not None:
        values[UNCERTAINTY_MEASUREMENT] = np.asarray(tile_uncertainty, dtype=np.float64)
    return tile_geojson(coords, tile_size0, values)


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
    tile_uncertainty: ArrayLike | None = None,
    n_classes: int | None = None,
    uncertainty_title: str | None = None,
) -> dict[str, Path]:
    """Write a slide's attention overlay, QuPath GeoJSON, and (optionally) top-tile gallery and
    tile-uncertainty overlay.

    Each file is written atomically (see :mod:`histoguard.core._atomic`): a file present under its
    final name is complete.

    Args:
        out_dir: output folder, created if missing.
        slide_stem: file-name stem of the slide (bounded to 150 bytes in the names,
            :func:`~histoguard.core._names.bounded_stem`).
        thumbnail, downsample, coords, tile_size0, scores: as for :func:`attention_overlay`.
            Without a thumbnail (the slide could not be opened) the map is drawn on white,
            at a downsample raised so that its longest side is at most 2048 pixels.
        top_tiles: ``(K, S, S, 3)`` uint8 pixels of the tiles at
            ``top_tile_indices(scores, K)``, in that order (highest score first).
        title: a line above the overlay (see :func:`attention_overlay`).
        tile_uncertainty: ``(N,)`` per-tile predictive entropy in nats; drawn with
            :func:`uncertainty_overlay` and added to the GeoJSON.
        n_classes: C, needed with ``tile_uncertainty`` (the colour scale is 0..ln C).
        uncertainty_title: a line above the uncertainty overlay.

    Returns:
        ``{"attention": <stem>.attention.png, "geojson": <stem>.attention.geojson}`` plus
        ``"top_tiles": <stem>.top_tiles.png`` when tiles were given and
        ``"uncertainty": <stem>.uncertainty.png`` with ``tile_uncertainty``.

    Raises:
        ValueError: ``tile_uncertainty`` without ``n_classes``, and the errors of
            :func:`attention_overlay` and :func:`uncertainty_overlay`.
    """
    if tile_uncertainty is not None and n_classes is None:
        raise ValueError("tile_uncertainty needs n_classes: its colour scale runs 0..ln C")
    s = np.asarray(scores, dtype=np.float64)
    stem = bounded_stem(slide_stem)
    paths = {
        "attention": out_dir / f"{stem}.attention.png",
        "geojson": out_dir / f"{stem}.attention.geojson",
    }
    if thumbnail is None:
        thumbnail, downsample = _blank_canvas(coords, tile_size0, downsample)
    overlay = attention_overlay(thumbnail, downsample, coords, tile_size0, s, title=title)
    write_bytes_atomic(paths["attention"], _png_bytes(overlay))
    if tile_uncertainty is not None and n_classes is not None:
        paths["uncertainty"] = out_dir / f"{stem}.uncertainty.png"
        drawn = uncertainty_overlay(
            thumbnail, downsample, coords, tile_size0, tile_uncertainty, n_classes,
            title=uncertainty_title,
        )  # fmt: skip
        write_bytes_atomic(paths["uncertainty"], _png_bytes(drawn))
    _write_geojson(paths["geojson"], coords, tile_size0, s, tile_uncertainty)
    if top_tiles is not None:
        k = len(top_tiles)
        gallery = top_tiles_gallery(top_tiles, s[top_tile_indices(s, k)], columns=8)
        paths["top_tiles"] = out_dir / f"{stem}.top_tiles.png"
        write_bytes_atomic(paths["top_tiles"], _png_bytes(gallery))
    return paths


def _write_geojson(
    path: Path,
    coords: ArrayLike,
    tile_size0: float,
    scores: ArrayLike,
    tile_uncertainty: ArrayLike | None = None,
) -> None:
    geojson = attention_geojson(coords, tile_size0, scores, tile_uncertainty=tile_uncertainty)
    write_bytes_atomic(path, json.dumps(geojson, allow_nan=False).encode())


@dataclass(frozen=True)
class PredictionHeatmaps:
    """What :func:`write_prediction_heatmaps` wrote.

    Attributes:
        paths: slide -> ``{"attention", "geojson", "top_tiles", "uncertainty"}`` -> file, for
            the files written (a slide that got none is absent).
        warnings: why something was not drawn (also logged).
    """

    paths: dict[str, dict[str, Path]]
    warnings: tuple[str, ...]


def write_prediction_heatmaps(
    predictions: Sequence[SlidePrediction], out_dir: str | Path, *, top_k: int = 16
) -> PredictionHeatmaps:
    """Draw the attention and tile uncertainty of :func:`histoguard.mil.predict`'s results.

    Per slide with attention and coordinates: ``<slide>.attention.png`` (the overlay on the
    slide's thumbnail with a colour bar, titled with the decision and its evidence, see
    :func:`~histoguard.report._titles.prediction_title`), ``<slide>.attention.geojson``
    (QuPath measurement map: attention, and each tile's predictive entropy when the prediction
    has ``tile_uncertainty``), ``<slide>.top_tiles.png`` (the ``top_k`` tiles, for histoguard
    feature files whose slide opens) and, with ``tile_uncertainty``,
    ``<slide>.uncertainty.png`` (:func:`uncertainty_overlay`, entropy on 0..ln C).

    Nothing is drawn from a guess: a slide whose tile size in level-0 pixels is unknown gets no
    files, and one whose slide cannot be reopened gets the GeoJSON only; both are warnings
    (logged and returned) naming the feature file and the fix. So is a ``tile_uncertainty``
    that does not have one value per tile (it is then left out).

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
        written, problems = _draw_prediction(prediction, out, top_k)
        if written:
            paths[prediction.slide] = written
        for problem in problems:
            logger.warning("%s", problem)
            warnings.append(problem)
    return PredictionHeatmaps(paths=paths, warnings=tuple(warnings))


def _tile_uncertainty(
    prediction: SlidePrediction, n_tiles: int, source: object
) -> tuple[npt.NDArray[np.float64] | None, list[str]]:
    """The prediction's per-tile entropy if it has one value per tile, and why not otherwise."""
    if prediction.tile_uncertainty is None:
        return None, []
    entropy = np.asarray(prediction.tile_uncertainty, dtype=np.float64)
    if entropy.shape != (n_tiles,):
        return None, [
            f"{source}: tile uncertainty not drawn: {entropy.shape} values for {n_tiles} tiles"
        ]
    return entropy, []


#: Side in pixels of a tile in a tile folder's galleries.
GALLERY_TILE_PX = 160


def _tile_folder_galleries(
    prediction: SlidePrediction, out: Path, top_k: int
) -> tuple[dict[str, Path], list[str]]:
    """A tile folder has no slide to draw a map on: the ``top_k`` most and least attended tiles
    as two galleries (``<slide>.top_tiles.png``, ``<slide>.least_attended.png``), each tile
    labelled with its rank and attention, read from the folder by the feature file's names."""
    from histoguard.errors import SlideError
    from histoguard.slide import TileFolder

    source = prediction.feature_file or prediction.slide
    scores = np.asarray(prediction.attention, dtype=np.float64)
    names = prediction.tile_names
    if names is None or len(names) != len(scores):
        return {}, [f"{source}: no gallery: the feature file does not name its tiles; "
                    "extract the tile folder with histoguard"]  # fmt: skip
    try:
        folder = TileFolder.open(Path(prediction.slide_path or ""))
    except SlideError as error:
        why = str(error)
        if prediction.anonymized and prediction.slide_path is not None:
            why = scrub_slide(why, prediction.slide_path, prediction.slide)
        return {}, [f"{source}: no gallery: {why}"]
    position = {name: i for i, name in enumerate(folder.names)}
    written: dict[str, Path] = {}
    problems: list[str] = []
    chosen = (top_tile_indices(scores, top_k), top_tile_indices(-scores, top_k))
    for key, rows in zip(("top_tiles", "least_attended"), chosen, strict=True):
        missing = [names[r] for r in rows if names[r] not in position]
        tiles, failures = folder.read(
            [position[names[r]] for r in rows if names[r] in position], GALLERY_TILE_PX
        )
        if missing or failures or not len(tiles):
            where = prediction.slide if prediction.anonymized else folder.path
            problems.append(f"{source}: {key} gallery not drawn: {len(missing) + len(failures)} "
                            f"of its tiles are missing or unreadable in {where}")  # fmt: skip
            continue
        path = out / f"{bounded_stem(prediction.slide)}.{key}.png"
        write_bytes_atomic(path, _png_bytes(top_tiles_gallery(tiles, scores[rows], columns=8)))
        written[key] = path
    return written, problems


def _draw_prediction(
    prediction: SlidePrediction, out: Path, top_k: int
) -> tuple[dict[str, Path], list[str]]:
    """One slide's heatmap files, and the warnings (none when everything was drawn)."""
    from histoguard.errors import SlideError
    from histoguard.slide import TileSpec, open_slide, read_tiles

    source = prediction.feature_file or prediction.slide
    if prediction.attention is None:
        return {}, []  # a model without attention: nothing to draw, nothing wrong
    if prediction.coords is None:
        return {}, [f"{source}: no heatmap: the feature file has no tile coordinates"]
    if prediction.slide_path is not None and Path(prediction.slide_path).is_dir():
        return _tile_folder_galleries(prediction, out, top_k)
    if prediction.tile_size0 is None:
        return {}, [
            f"{source}: no heatmap: the feature file does not say how large its tiles are in "
            "level-0 pixels (patch_size_level0, level0_tile_size, or CLAM's patch_size with "
            "patch_level 0 or a known downsample). Pass the slide (--slide / slides=) so its "
            "level downsample can be read, or extract the features with histoguard"
        ]
    scores = np.asarray(prediction.attention, dtype=np.float64)
    coords, size0 = prediction.coords, prediction.tile_size0
    entropy, problems = _tile_uncertainty(prediction, len(scores), source)
    attrs = prediction.attrs
    geojson = out / f"{bounded_stem(prediction.slide)}.attention.geojson"
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
        _write_geojson(geojson, coords, size0, scores, entropy)
        where, why = slide_path if slide_path is not None else "(unknown)", str(error)
        if prediction.anonymized and slide_path is not None:  # its id only, never its path
            where, why = prediction.slide, scrub_slide(why, slide_path, prediction.slide)
        drawn = "attention and uncertainty overlays" if entropy is not None else "attention overlay"
        return {"geojson": geojson}, [
            *problems,
            f"{source}: {drawn} not drawn: cannot reopen the slide {where} ({why}); "
            f"wrote {geojson.name} only. Pass the slide (--slide / slides=) to draw the overlay"
            + (
                " and the salt it was anonymised with (--anonymize-salt / anonymizer=)"
                if prediction.anonymized
                else ""
            ),
        ]
    written = write_heatmaps(
        out, prediction.slide, thumbnail=thumbnail.image, downsample=thumbnail.downsample,
        coords=coords, tile_size0=size0, scores=scores, top_tiles=top_tiles,
        title=prediction_title(prediction), tile_uncertainty=entropy,
        n_classes=len(prediction.probabilities), uncertainty_title=uncertainty_title(prediction),
    )  # fmt: skip
    return written, problems
