"""Tiling slides into per-slide coordinate files: one slide, and a crash-safe resumable batch.

The overview picture (thumbnail with tissue outline and tile grid) is drawn by
``histoguard.report``, which is downstream of this room: callers that want the PNG pass a renderer
as ``overview`` (``histoguard.tile_slides`` does). Without one, no PNG is written.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from histoguard._version import __version__
from histoguard.core._atomic import remove_stale_temporaries, write_bytes_atomic
from histoguard.core._batch import (
    BatchReport,
    ProgressCallback,
    SlideResult,
    run_batch,
    write_run_config,
)
from histoguard.core._lock import run_lock
from histoguard.core._names import bounded_stem
from histoguard.core._privacy import Anonymizer, default_map_path, default_salt_path
from histoguard.core._weights import file_sha256
from histoguard.errors import ConfigError, OutputError
from histoguard.slide._coords_file import (
    REJECT_REASONS,
    CoordsFile,
    read_coords_file,
    write_coords_file,
)
from histoguard.slide._geojson import tissue_geojson
from histoguard.slide._inputs import find_slides, require_slides
from histoguard.slide._open import open_slide
from histoguard.slide._preflight import DEFAULT_MAX_PIXELS, RECOPY
from histoguard.slide._qc import background_fraction, blur_score, is_constant, repeated, tile_digest
from histoguard.slide._reader import SlideReader, Thumbnail
from histoguard.slide._registry import BACKENDS
from histoguard.slide._tile_reader import read_tiles
from histoguard.slide._tiling import EDGE_MODES, Edge, TileSpec, tile_grid
from histoguard.slide._tissue import Polygon, TissueMask, TissueParams, detect_tissue

if TYPE_CHECKING:
    from PIL import Image

logger = logging.getLogger(__name__)

SUMMARY_NAME = "tiling_summary.csv"
CONFIG_NAME = "tiling_config.json"
#: Where the anonymisation secrets are: kept out of saved configurations and result keys.
PRIVATE_FIELDS = ("anonymize_salt", "anonymize_map")


class OverviewRenderer(Protocol):
    """Draws the tiling overview; ``histoguard.report.render_tiling_overview`` is one.

    Args:
        thumbnail: ``(H, W, 3)`` uint8 RGB.
        downsample: level-0 pixels per thumbnail pixel.
        polygons: tissue polygons in level-0 coordinates.
        coords: ``(N, 2)`` level-0 top-left tile corners.
        tile_size0: tile side in level-0 pixels.

    Returns:
        An RGB image the size of the thumbnail, saved as ``<stem>.thumbnail.png``.
    """

    def __call__(
        self,
        thumbnail: np.ndarray,
        downsample: float,
        polygons: Sequence[Polygon],
        coords: np.ndarray,
        tile_size0: float,
    ) -> Image.Image: ...


@dataclass(frozen=True, kw_only=True)
class TilingConfig:
    """Everything that decides a tiling result. Saved next to the outputs as JSON.

    Attributes:
        mpp: target micrometres per pixel of the tiles.
        tile_size: tile side in pixels at ``mpp``.
        overlap: pixels (at ``mpp``) shared by neighbouring tiles.
        min_tissue_fraction: keep tiles whose tissue-mask coverage is at least this (0-1).
        thumbnail_size: longest side (pixels) of the thumbnail used for tissue detection.
        backend: force a slide back-end by name; None tries them in priority order.
        mpp_override: micrometres per level-0 pixel for slides whose metadata lacks it.
        max_pixels: largest accepted level-0 width x height.
        tissue: tissue-detection parameters.
        threads: decoding threads per slide (does not change results).
        edge: ``"pad"`` keeps the partial tiles at the right and bottom edges, white beyond the
            slide (as CLAM and TRIDENT do); ``"drop"`` keeps whole tiles only.
        anonymize: name each slide in every output (file names, attributes, summaries, logs)
            by its pseudonymous id (``histoguard.core._privacy``), never by its path or stem.
        anonymize_salt: the salt file (created when absent); None: ``$HISTOGUARD_ANON_SALT_FILE``
            or ``~/.config/histoguard/anonymize.salt``, resolved when the config is made.
        anonymize_map: the mapping CSV (id -> original path); None: beside the salt file.
    """

    mpp: float = 0.5
    tile_size: int = 224
    overlap: int = 0
    min_tissue_fraction: float = 0.5
    thumbnail_size: int = 2048
    backend: str | None = None
    mpp_override: float | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    tissue: TissueParams = field(default_factory=TissueParams)
    threads: int = 2
    edge: Edge = "pad"
    anonymize: bool = False
    anonymize_salt: Path | None = None
    anonymize_map: Path | None = None

    def __post_init__(self) -> None:
        self._check_anonymize()
        if not self.mpp > 0 or (self.mpp_override is not None and not self.mpp_override > 0):
            raise ConfigError(
                f"mpp and mpp_override must be positive, got {self.mpp}, {self.mpp_override}"
            )
        if self.tile_size < 1 or not 0 <= self.overlap < self.tile_size:
            raise ConfigError(
                "need tile_size >= 1 and 0 <= overlap < tile_size, "
                f"got {self.tile_size}, {self.overlap}"
            )
        if self.backend is not None:
            BACKENDS.check(self.backend, field="backend")
        if not 0.0 <= self.min_tissue_fraction <= 1.0:
            raise ConfigError(
                f"min_tissue_fraction must be in [0, 1], got {self.min_tissue_fraction}"
            )
        if self.thumbnail_size < 64:
            raise ConfigError(f"thumbnail_size must be at least 64, got {self.thumbnail_size}")
        if self.edge not in EDGE_MODES:
            raise ConfigError(f"edge must be one of {', '.join(EDGE_MODES)}, got {self.edge!r}")

    def _check_anonymize(self) -> None:
        if not self.anonymize:
            if self.anonymize_salt is not None or self.anonymize_map is not None:
                raise ConfigError("anonymize_salt and anonymize_map need anonymize=True")
            return
        salt = Path(self.anonymize_salt or default_salt_path()).expanduser().absolute()
        mapping = Path(self.anonymize_map or default_map_path(salt)).expanduser().absolute()
        object.__setattr__(self, "anonymize_salt", salt)  # fixed here: workers see the same
        object.__setattr__(self, "anonymize_map", mapping)

    def anonymizer(self) -> Anonymizer | None:
        """The salt and mapping when :attr:`anonymize` is on (the salt file is created when
        absent), else None."""
        if not self.anonymize:
            return None
        return Anonymizer.load(self.anonymize_salt, self.anonymize_map)

    def public_dict(self) -> dict[str, Any]:
        """The fields as saved next to the outputs: all but where the anonymisation secrets
        are."""
        values = asdict(self)
        for name in PRIVATE_FIELDS:
            values.pop(name)
        return values

    def result_key(self) -> str:
        """JSON of the fields that change the output (not ``threads``, nor the anonymisation:
        it changes names, which resume checks compare), for resume checks."""
        values = self.public_dict()
        values.pop("threads")
        values.pop("anonymize")
        return json.dumps(values, sort_keys=True)


def slide_name(slide: Path, config: TilingConfig | None = None) -> str:
    """How outputs name the slide: its stem, bounded (``core._names.bounded_stem``; the attr
    ``slide_stem`` keeps the original), or its pseudonymous id when ``config`` anonymises."""
    anonymizer = config.anonymizer() if config is not None else None
    return anonymizer.id_for(slide) if anonymizer is not None else bounded_stem(slide.stem)


def slide_ids(slide: Path, config: TilingConfig | None = None) -> dict[str, str]:
    """The attributes that name the slide in its output files: ``slide_path`` (resolved; empty
    when anonymised) and ``slide_stem`` (the pseudonymous id when anonymised)."""
    if config is not None and config.anonymize:
        return {"slide_path": "", "slide_stem": slide_name(slide, config)}
    return {"slide_path": str(slide.resolve()), "slide_stem": slide.stem}


def output_paths(out_dir: Path, slide: Path, config: TilingConfig | None = None) -> dict[str, Path]:
    """Where a slide's outputs go: ``h5``, ``thumbnail`` (PNG, when drawn) and ``geojson``,
    named by :func:`slide_name`."""
    stem = slide_name(slide, config)
    return {
        "h5": out_dir / f"{stem}.h5",
        "thumbnail": out_dir / f"{stem}.thumbnail.png",
        "geojson": out_dir / f"{stem}.tissue.geojson",
    }


def tile_slide(
    slide: str | Path,
    out_dir: str | Path,
    config: TilingConfig | None = None,
    *,
    on_progress: ProgressCallback | None = None,
    overview: OverviewRenderer | None = None,
) -> SlideResult:
    """Detect tissue, tile it, score each tile, and write the slide's outputs atomically.

    Writes ``<stem>.tissue.geojson`` (and ``<stem>.thumbnail.png`` when ``overview`` is given)
    first and the ``<stem>.h5`` tile file last, so a verified ``.h5`` means the slide is
    finished.

    Args:
        slide: the slide file.
        out_dir: output folder (created if needed).
        config: tiling parameters; defaults to 224 px tiles at 0.5 µm/px.
        on_progress: called as ``on_progress(tiles_read, tiles_total)``.
        overview: draws the overview PNG (``histoguard.report.render_tiling_overview``); None
            writes no PNG. ``histoguard.tile_slide`` passes report's renderer.

    Returns:
        The slide's :class:`SlideResult` (status ``done``).

    Raises:
        SlideError: the slide cannot be opened (see :func:`open_slide`).
        TilingError: the requested resolution cannot be produced from this slide.
    """
    started = time.perf_counter()
    config = config or TilingConfig()
    slide, out_dir = Path(slide), Path(out_dir)
    paths = output_paths(out_dir, slide, config)
    anonymizer = config.anonymizer()
    if anonymizer is not None:
        anonymizer.record([slide])
    with open_slide(
        slide,
        backend=config.backend,
        mpp_override=config.mpp_override,
        max_pixels=config.max_pixels,
    ) as reader:
        spec = TileSpec.for_slide(
            slide_mpp=reader.mpp,
            level_downsamples=reader.level_downsamples,
            mpp=config.mpp,
            tile_size=config.tile_size,
            overlap=config.overlap,
        )
        thumbnail = reader.get_thumbnail(config.thumbnail_size)
        tissue = detect_tissue(
            thumbnail.image, downsample=thumbnail.downsample, mpp=reader.mpp, params=config.tissue
        )
        candidates, fractions, undetermined = _candidate_tiles(
            reader.dimensions, spec, tissue, thumbnail, config.min_tissue_fraction, config.edge
        )
        scores = _read_and_score(reader, spec, candidates, config.threads, on_progress)
        readable = ~np.isnan(scores.background_fraction)
        # Tiles from damaged thumbnail areas had no tissue check: their own pixels decide.
        looks_like_tissue = scores.background_fraction <= 1.0 - config.min_tissue_fraction
        wanted = ~undetermined | looks_like_tissue
        reason = _rejections(scores, readable, wanted)
        keep = wanted & (reason == "")
        left_out = reason != ""
        first_error = thumbnail.first_error or scores.first_error
        if anonymizer is not None:
            first_error = anonymizer.scrub(first_error, slide)
        if left_out.any() and not keep.any():
            # Tissue was found but not one of its tiles is usable: the slide is damaged, and a
            # "done" slide with an empty bag would only fail later, in training or prediction.
            return _unusable(slide, reason, first_error, time.perf_counter() - started)

        _write_pictures(paths, thumbnail, tissue, candidates[keep], spec.level0_tile_size, overview)

        n_unreadable = int((~readable).sum())
        n_constant = int((reason == "constant").sum())
        n_duplicate = int((reason == "duplicate").sum())
        attrs: dict[str, Any] = {
            **spec.to_dict(),
            **slide_ids(slide, config),
            "slide_sha256": _slide_sha256(slide),
            "backend": reader.backend_name,
            "vendor": reader.vendor,
            "objective_power": reader.objective_power,
            "mpp_source": "override" if config.mpp_override is not None else "metadata",
            "level0_width": reader.dimensions[0],
            "level0_height": reader.dimensions[1],
            "tissue_area_fraction": tissue.area_fraction(),
            "n_unreadable_tiles": n_unreadable,
            "n_constant_tiles": n_constant,
            "n_duplicate_tiles": n_duplicate,
            "first_read_error": first_error,
            "histoguard_version": __version__,
            "edge": config.edge,
            "patch_size_level0": spec.level0_tile_size,
            "config_json": config.result_key(),
        }
        qc = {
            "tissue_fraction": fractions[keep],
            "background_fraction": scores.background_fraction[keep],
            "blur_score": scores.blur_score[keep],
        }
        write_coords_file(
            paths["h5"],
            candidates[keep],
            qc,
            attrs,
            rejected=candidates[left_out],
            rejected_reason=reason[left_out].tolist(),
        )
    return SlideResult(
        slide=slide,
        status="done",
        output=paths["h5"],
        n_tiles=int(keep.sum()),
        n_unreadable=n_unreadable,
        n_constant=n_constant,
        n_duplicate=n_duplicate,
        flagged=bool(n_unreadable or n_constant or n_duplicate or thumbnail.first_error),
        message=_flag_message(first_error, n_constant, n_duplicate)
        or ("" if keep.any() else "no tiles on tissue at these settings"),
        seconds=time.perf_counter() - started,
    )


def _unusable(slide: Path, reason: np.ndarray, first_error: str, seconds: float) -> SlideResult:
    """The ``failed`` result of a slide whose every tissue tile was left out (``reason`` all
    set); no tile file is written, so a rerun tries the slide again."""
    counts = {name: int((reason == name).sum()) for name in REJECT_REASONS}
    what = ", ".join(f"{n} {name}" for name, n in counts.items() if n)
    return SlideResult(
        slide=slide,
        status="failed",
        n_unreadable=counts.get("unreadable", 0),
        n_constant=counts.get("constant", 0),
        n_duplicate=counts.get("duplicate", 0),
        flagged=True,
        message=(
            f"{slide}: none of its {int((reason != '').sum())} tissue tiles is usable ({what}"
            f"{'; first error: ' + first_error if first_error else ''}); {RECOPY}"
        ),
        seconds=seconds,
    )


def _rejections(scores: _TileScores, readable: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """``(N,)`` reason each candidate is left out (a :data:`REJECT_REASONS` name), ``""`` if not.

    Unreadable tiles are all recorded. Constant and duplicate tiles only among those that would
    be kept: identical glass tiles outside the tissue are expected and never kept anyway.
    Constant tiles are not also counted as duplicates (a zero-filled region repeats itself).
    """
    reason = np.full(len(readable), "", dtype="<U10")
    reason[~readable] = "unreadable"
    candidates = readable & wanted
    reason[candidates & scores.constant] = "constant"
    varied = candidates & ~scores.constant
    digests = [d if ok else None for d, ok in zip(scores.digests, varied, strict=True)]
    reason[repeated(digests)] = "duplicate"
    return reason


def _flag_message(first_error: str, n_constant: int, n_duplicate: int) -> str:
    """The first read error and what the integrity checks left out; ``""`` when neither."""
    parts = []
    if n_constant:
        parts.append(f"{n_constant} one-colour tiles on tissue (zero-filled or blank region)")
    if n_duplicate:
        parts.append(
            f"{n_duplicate} tiles whose pixels repeat another position's (tiles stored once "
            "and pointed to from several places)"
        )
    integrity = ("left out " + " and ".join(parts) + "; check the slide file") if parts else ""
    return "; ".join(m for m in (first_error, integrity) if m)


def _write_pictures(
    paths: dict[str, Path],
    thumbnail: Thumbnail,
    tissue: TissueMask,
    coords: np.ndarray,
    size0: int,
    overview: OverviewRenderer | None,
) -> None:
    """The overview PNG (when a renderer is given) and the tissue GeoJSON, each atomically."""
    polygons = tissue.polygons()
    if overview is not None:
        picture = overview(thumbnail.image, thumbnail.downsample, polygons, coords, size0)
        png = io.BytesIO()
        picture.save(png, format="PNG")
        write_bytes_atomic(paths["thumbnail"], png.getvalue())
    write_bytes_atomic(paths["geojson"], json.dumps(tissue_geojson(polygons)).encode())


def _candidate_tiles(
    dimensions: tuple[int, int],
    spec: TileSpec,
    tissue: TissueMask,
    thumbnail: Thumbnail,
    min_tissue_fraction: float,
    edge: Edge,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tiles worth reading: on detected tissue, or touching an area the thumbnail could not read.

    Returns:
        ``(coords (N, 2) int64, tissue fractions (N,), undetermined (N,) bool)``; undetermined
        tiles lie in damaged thumbnail areas, where the mask says nothing.
    """
    grid = tile_grid(dimensions, spec, edge=edge)
    fractions = tissue.tile_fractions(grid, spec.level0_tile_size)
    on_tissue = (fractions >= min_tissue_fraction) & (fractions > 0)
    undetermined = np.zeros(len(grid), dtype=bool)
    if thumbnail.unreadable.any():
        damaged = TissueMask(mask=thumbnail.unreadable, downsample=thumbnail.downsample)
        undetermined = ~on_tissue & (damaged.tile_fractions(grid, spec.level0_tile_size) > 0)
    chosen = on_tissue | undetermined
    return grid[chosen], fractions[chosen], undetermined[chosen]


@dataclass
class _TileScores:
    """Per-tile QC, ``(N,)`` float32 each, NaN where the tile could not be decoded; ``constant``
    ``(N,)`` bool and ``digests`` (None where undecodable) for the integrity checks."""

    background_fraction: np.ndarray
    blur_score: np.ndarray
    constant: np.ndarray
    digests: list[bytes | None]
    first_error: str = ""


def _read_and_score(
    reader: SlideReader,
    spec: TileSpec,
    coords: np.ndarray,
    threads: int,
    on_progress: ProgressCallback | None,
) -> _TileScores:
    scores = _TileScores(
        background_fraction=np.full(len(coords), np.nan, dtype=np.float32),
        blur_score=np.full(len(coords), np.nan, dtype=np.float32),
        constant=np.zeros(len(coords), dtype=bool),
        digests=[None] * len(coords),
    )
    for done, read in enumerate(read_tiles(reader, spec, coords, threads=threads)):
        if read.tile is None:
            scores.first_error = scores.first_error or str(read.error)
        else:
            scores.background_fraction[read.index] = background_fraction(read.tile)
            scores.blur_score[read.index] = blur_score(read.tile)
            scores.constant[read.index] = is_constant(read.tile)
            scores.digests[read.index] = tile_digest(read.tile)
        if on_progress is not None:
            on_progress(done + 1, len(coords))
    return scores


def finished_output(out_dir: Path, slide: Path, config: TilingConfig) -> CoordsFile | None:
    """The slide's verified tile file if it exists and was made with the same configuration."""
    path = output_paths(out_dir, slide, config)["h5"]
    if not path.is_file():
        return None
    try:
        existing = read_coords_file(path)
    except OutputError:
        return None
    if existing.attrs.get("config_json") != config.result_key():
        return None
    ids = slide_ids(slide, config)
    if any(existing.attrs.get(key, "") != value for key, value in ids.items()):
        return None
    return existing


def tile_slides(
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    config: TilingConfig | None = None,
    *,
    progress: bool = False,
    overview: OverviewRenderer | None = None,
) -> BatchReport:
    """Tile many slides; one bad slide never stops the batch, and reruns resume.

    For each slide: a verified output made with the same configuration is ``skipped``; otherwise
    the slide is tiled (``done``) or its error recorded (``failed``). The summary table
    ``tiling_summary.csv`` is rewritten atomically after every slide, and the resolved
    configuration is saved as ``tiling_config.json``.

    Args:
        inputs: slide files and/or folders of slides.
        out_dir: output folder.
        config: tiling parameters.
        progress: draw rich progress bars on the terminal.
        overview: draws each slide's overview PNG (see :func:`tile_slide`); None writes none.
            ``histoguard.tile_slides`` passes ``histoguard.report``'s renderer.

    Returns:
        A :class:`BatchReport`; check ``report.failed``.

    Raises:
        NoSlidesError: the inputs hold no slide (nothing is written).
        ConfigError: anonymising (``config.anonymize``) with the salt or the mapping file
            inside ``out_dir``; or a live run with other settings holds ``out_dir`` (its
            ``.histoguard-run.lock``, see :func:`~histoguard.core._lock.run_lock`; nothing
            is written).
    """
    config = config or TilingConfig()
    slides = find_slides(inputs)
    require_slides(inputs, slides)
    out_dir = Path(out_dir)
    anonymizer = config.anonymizer()
    if anonymizer is not None:
        anonymizer.check_outside(out_dir)
        anonymizer.record(slides)
    with run_lock(out_dir, config.result_key()) as lock:  # ConfigError: other settings
        remove_stale_temporaries(out_dir)  # every provably dead one: summary, config too
        values = {"histoguard_version": __version__, **config.public_dict()}
        write_run_config(out_dir / CONFIG_NAME, values, config.result_key())

        def job(slide: Path, on_progress: ProgressCallback) -> SlideResult:
            lock.refresh()
            return _tile_one(slide, out_dir, config, on_progress, overview)

        summary = out_dir / SUMMARY_NAME
        return run_batch(slides, summary, job, progress=progress, anonymizer=anonymizer)


def _tile_one(
    slide: Path,
    out_dir: Path,
    config: TilingConfig,
    on_progress: ProgressCallback,
    overview: OverviewRenderer | None,
) -> SlideResult:
    shown = slide_name(slide, config) if config.anonymize else str(slide)
    finals = output_paths(out_dir, slide, config).values()
    remove_stale_temporaries(out_dir, names={p.name for p in finals})
    existing = finished_output(out_dir, slide, config)
    if existing is None:
        try:
            result = tile_slide(slide, out_dir, config, on_progress=on_progress, overview=overview)
        except Exception as error:
            anonymizer = config.anonymizer()
            why = anonymizer.scrub(str(error), slide) if anonymizer else error
            logger.info("%s: tiling failed: %s", shown, why)
            raise
        logger.info("%s: tiled, %d tiles", shown, result.n_tiles)
        return result
    logger.info("%s: skipped, finished output with the same settings exists", shown)
    h5 = output_paths(out_dir, slide, config)["h5"]
    return resumed_result(slide, h5, len(existing.coords), existing.attrs)


def resumed_result(
    slide: Path, output: Path, n_tiles: int, attrs: Mapping[str, Any]
) -> SlideResult:
    """The ``skipped`` result of a slide whose finished output (a tile or feature file with
    ``n_tiles`` rows and attributes ``attrs``) is reused: a resumed batch reports what the file
    holds - its unreadable, constant and duplicate tile counts and first read error."""
    first_error = str(attrs.get("first_read_error", ""))
    n_unreadable = int(attrs.get("n_unreadable_tiles", 0))
    n_constant = int(attrs.get("n_constant_tiles", 0))
    n_duplicate = int(attrs.get("n_duplicate_tiles", 0))
    return SlideResult(
        slide=slide,
        status="skipped",
        output=output,
        n_tiles=n_tiles,
        n_unreadable=n_unreadable,
        n_constant=n_constant,
        n_duplicate=n_duplicate,
        flagged=bool(first_error or n_unreadable or n_constant or n_duplicate),
        message=_flag_message(first_error, n_constant, n_duplicate),
    )


def _slide_sha256(slide: Path) -> str:
    """The slide file's SHA-256 (for a folder format such as MRXS, the index file's only; ``""``
    for a folder), recorded so a report can name exactly which slide a model saw."""
    return file_sha256(slide) if slide.is_file() else ""
