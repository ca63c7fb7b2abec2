"""Feature extraction of one slide: its tiles through an encoder into ``<slide_stem>.h5``.

This is the per-slide job every executor runs (``_local``: in this process; ``_dask``: one task
per slide on a cluster); ``_run.extract_features`` chooses the executor. Imports go one way:
``_run`` -> executors -> this module, never back.

Reading overlaps inference: reader processes (a torch ``DataLoader``; each process opens the slide
itself) decode, optionally stain-normalise, and queue batches - a bounded prefetch of two batches
per reader - while the main process runs the encoder. Inside a Dask worker, reading happens in
threads instead.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from histoguard._version import __version__
from histoguard.augment import Augmentation, augment_view, parse_augmentations
from histoguard.core._atomic import remove_stale_temporaries
from histoguard.core._batch import ProgressCallback, SlideResult
from histoguard.core._device import check_device
from histoguard.encoders import Encoder, EncoderInfo, load_encoder
from histoguard.errors import ConfigError, ImageError, OutputError
from histoguard.features._feature_file import finished_feature_file, write_feature_file
from histoguard.slide import TileSpec, TilingConfig, open_slide, read_coords_file, read_tiles
from histoguard.slide._tile_folder import TileFolder
from histoguard.slide._tile_job import (
    PRIVATE_FIELDS,
    finished_output,
    output_paths,
    resumed_result,
    slide_ids,
    slide_name,
    tile_slide,
)

_FIRST_BATCH = 8

#: What happens to the embeddings of augmented views: kept beside the features, or averaged in.
ViewsMode = Literal["store", "mean"]


@dataclass(frozen=True, kw_only=True)
class ExtractionConfig:
    """Everything that decides an extraction result. Saved next to the outputs as JSON.

    Attributes:
        encoder: registry name (``histoguard encoders`` lists them).
        weights: local weights file or model directory for the encoder.
        allow_pickle: accept a pickled checkpoint (loaded with ``weights_only=True``).
        tiling: how slides are tiled when no tiling output is reused.
        tiles_dir: folder of existing ``<slide_stem>.h5`` tile files to reuse; slides without
            one there are tiled on the fly into ``<out>/tiles``.
        stain_normalize: ``"macenko"`` or ``"reinhard"`` to normalise tiles before encoding.
        stain_reference: the reference image for stain normalisation.
        batch_size: tiles per encoder call.
        readers: reader processes per slide (0 reads in the main process).
        device: torch device for the encoder (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
        augment: perturbations that make an augmented view, applied in order after stain
            normalisation, each ``NAME`` or ``NAME:SEVERITY`` (``histoguard.augment``; without a
            severity, 2 - or 1 for the D4 transforms); stored as ``NAME:SEVERITY``.
        views: K augmented views embedded per tile (0: none; needs ``augment``).
        views_mode: ``"store"`` writes the views' embeddings as ``/views (K, N, D)`` beside
            the un-augmented ``features``; ``"mean"`` replaces ``features`` by the mean of the
            un-augmented embedding and the K views' (no ``/views``).
        seed: seeds the augmentation: view ``k`` of tile ``i`` draws from ``(seed, k)`` and
            ``i``, so reruns are identical and a tile's view does not depend on batching.
    """

    encoder: str
    weights: Path | None = None
    allow_pickle: bool = False
    tiling: TilingConfig = field(default_factory=TilingConfig)
    tiles_dir: Path | None = None
    stain_normalize: str | None = None
    stain_reference: Path | None = None
    batch_size: int = 64
    readers: int = 2
    device: str = "cpu"
    augment: tuple[str, ...] = ()
    views: int = 0
    views_mode: ViewsMode = "store"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.readers < 0:
            raise ConfigError(
                f"need batch_size >= 1 and readers >= 0, got {self.batch_size}, {self.readers}"
            )
        if (self.stain_normalize is None) != (self.stain_reference is None):
            raise ConfigError("stain_normalize and stain_reference must be given together")
        if self.stain_normalize is not None:
            from histoguard.stain._registry import STAIN_REGISTRY

            STAIN_REGISTRY.check(self.stain_normalize, field="stain_normalize")
        check_device(self.device)
        self._check_views()

    def _check_views(self) -> None:
        if self.views < 0 or self.seed < 0:
            raise ConfigError(f"need views >= 0 and seed >= 0, got {self.views}, {self.seed}")
        if self.views_mode not in ("store", "mean"):
            raise ConfigError(f"views_mode must be 'store' or 'mean', got {self.views_mode!r}")
        if isinstance(self.augment, str):  # type: ignore[unreachable]  # callers without mypy
            raise ConfigError(f"augment must be a tuple of names, got the string {self.augment!r}")
        canonical = tuple(str(a) for a in parse_augmentations(self.augment))
        object.__setattr__(self, "augment", canonical)  # one spelling per augmentation
        if self.views and not canonical:
            raise ConfigError(
                f"views={self.views} needs augment: name the perturbations of a view "
                "(e.g. --augment hed_jitter:2 --augment rot90)"
            )
        if canonical and not self.views:
            raise ConfigError("augment is given but views is 0: set views to K >= 1")

    @property
    def augmentations(self) -> tuple[Augmentation, ...]:
        """The parsed :attr:`augment` chain."""
        return parse_augmentations(self.augment)

    def result_key(self, weights_sha256: str) -> str:
        """JSON of what changes the features (not batch size, readers or device)."""
        values = asdict(self)
        for volatile in ("batch_size", "readers", "device", "tiles_dir", "allow_pickle"):
            values.pop(volatile)
        for naming in ("anonymize", *PRIVATE_FIELDS):  # names, which resume checks compare
            values["tiling"].pop(naming)
        if not self.views:  # keys of extractions without views are as before views existed
            for unused in ("augment", "views", "views_mode", "seed"):
                values.pop(unused)
        values["weights"] = weights_sha256
        return json.dumps(values, sort_keys=True, default=str)


class _TileSource(Protocol):
    """Where a slide's tiles come from: a slide with a tile plan, or a folder of tile images."""

    coords: np.ndarray

    def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Tiles ``indices`` -> (indices read, (B, S, S, 3) uint8 tiles, error messages)."""
        ...


class _SlideTiles:
    """Tiles of a slide at planned coordinates; opens its own reader in whichever process reads."""

    def __init__(
        self, slide: Path, spec: TileSpec, coords: np.ndarray, tiling: TilingConfig, threads: int
    ) -> None:
        self.slide, self.spec, self.coords, self.tiling = slide, spec, coords, tiling
        self.threads = threads
        self._reader: Any = None

    def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
        if self._reader is None:
            self._reader = open_slide(
                self.slide, backend=self.tiling.backend, mpp_override=self.tiling.mpp_override
            )
        ok, tiles, errors = [], [], []
        reads = read_tiles(self._reader, self.spec, self.coords[indices], threads=self.threads)
        for read in sorted(reads, key=lambda r: r.index):
            if read.tile is None:
                errors.append(str(read.error))
            else:
                ok.append(indices[read.index])
                tiles.append(read.tile)
        size = self.spec.tile_size
        stacked = np.stack(tiles) if tiles else np.zeros((0, size, size, 3), np.uint8)
        return np.asarray(ok, dtype=np.int64), stacked, errors

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_reader"} | {"_reader": None}


class _FolderTiles:
    """A folder of tile images as one slide; coordinates are ``(index, 0)``.

    Tiles are resized once, straight to the encoder's input size by the encoder's own resize
    policy - exactly as the audit's tile tables are - so an image embeds the same either way.
    """

    def __init__(self, folder: TileFolder, encoder: EncoderInfo) -> None:
        self.folder, self.size, self.resize = folder, encoder.input_size, encoder.resize
        self.coords = folder.coords()

    def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
        tiles, failures = self.folder.read(
            [int(i) for i in indices], size=self.size, resize=self.resize
        )
        bad = {index for index, _ in failures}
        ok = np.asarray([i for i in indices if int(i) not in bad], dtype=np.int64)
        return ok, tiles, [message for _, message in failures]


class _Batches:
    """Map-style dataset over consecutive index batches; each item is read where it is asked for."""

    def __init__(
        self,
        source: _TileSource,
        batch_size: int,
        transform: Callable[[np.ndarray], np.ndarray] | None,
        views: _Views | None = None,
    ) -> None:
        self.source, self.transform, self.views = source, transform, views
        n = len(source.coords)
        # A short first batch gets the encoder going while the readers fill the queue.
        first = min(batch_size, _FIRST_BATCH)
        starts = [0, *range(first, n, batch_size)] if n > first else [0]
        ends = [*starts[1:], n]
        self.batches = [np.arange(s, e) for s, e in zip(starts, ends, strict=True) if e > s]

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray | None]:
        ok, tiles, errors = self.source.read(self.batches[i])
        if self.transform is not None and len(tiles):
            tiles = self.transform(tiles)
        # Augmented in the readers too, after stain normalisation (which would undo stain
        # augmentation): (K, B, S, S, 3).
        views = None if self.views is None else self.views(tiles, ok)
        return ok, tiles, errors, views


@dataclass(frozen=True)
class _Views:
    """K augmented views of a batch of tiles, each tile seeded by its index in the slide."""

    augmentations: tuple[Augmentation, ...]
    count: int
    seed: int

    def __call__(self, tiles: np.ndarray, indices: np.ndarray) -> np.ndarray:
        return np.stack(
            [
                augment_view(tiles, self.augmentations, seed=self.seed, view=k, indices=indices)
                for k in range(self.count)
            ]
        )


def _identity(item: Any) -> Any:
    return item


def _iterate(dataset: _Batches, readers: int) -> Any:
    if readers == 0 or len(dataset) <= 1:
        return (dataset[i] for i in range(len(dataset)))
    from torch.utils.data import DataLoader

    # batch_size=None: the dataset already yields whole batches; prefetch is bounded per reader.
    return DataLoader(
        dataset,  # type: ignore[arg-type]
        batch_size=None,
        shuffle=False,
        num_workers=min(readers, len(dataset)),
        prefetch_factor=2,
        collate_fn=_identity,
    )


def _stain_transform(config: ExtractionConfig) -> Callable[[np.ndarray], np.ndarray] | None:
    if config.stain_normalize is None or config.stain_reference is None:
        return None
    from histoguard.core._image import decode_image
    from histoguard.stain import stain_normalizer

    reference = decode_image(config.stain_reference)
    return stain_normalizer(config.stain_normalize, reference).transform


def check_stain_reference(config: ExtractionConfig) -> None:
    """Decode the stain reference and fit the normaliser on it once, before any slide, so that
    a missing, undecodable or tissue-free reference stops the run instead of failing every
    slide. Does nothing without stain normalisation.

    Raises:
        ConfigError: the reference cannot be read or decoded, or the method cannot fit on it
            (e.g. too little stained tissue); the message names ``--stain-reference``.
    """
    try:
        _stain_transform(config)
    except ImageError as error:  # the file: missing, not an image, too large
        raise ConfigError(
            f"stain reference (--stain-reference) {error.path}: {error.problem}; pass the path "
            "of an H&E image (PNG, JPEG or TIFF)"
        ) from None
    except ValueError as error:  # the stain method cannot fit on it
        raise ConfigError(
            f"stain reference (--stain-reference) {config.stain_reference}: {error} "
            f"(--stain-normalize {config.stain_normalize})"
        ) from None


def weights_digest(weights: Path | None) -> str:
    """SHA-256 of a weights file, or of a model directory's files (names and contents); ``""``
    without weights. Computed once per process for unchanged files (a batch asks for it per
    slide, and a foundation model's weights are gigabytes)."""
    if weights is None:
        return ""
    files = [weights] if weights.is_file() else sorted(p for p in weights.rglob("*") if p.is_file())
    signature = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    return _digest(weights, signature)


@functools.lru_cache(maxsize=8)
def _digest(weights: Path, signature: tuple[tuple[str, int, int], ...]) -> str:
    """:func:`weights_digest` of ``weights`` whose files have ``signature`` (path, size, mtime)."""
    from histoguard.core._weights import sha256_file

    if weights.is_file():
        return sha256_file(weights)
    digest = hashlib.sha256()
    for name, _, _ in signature:
        path = Path(name)
        digest.update(f"{path.relative_to(weights)}:{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def _view_attrs(config: ExtractionConfig) -> dict[str, Any]:
    """Provenance of the augmented views (none without views)."""
    if not config.views:
        return {}
    return {
        "augment": ",".join(config.augment),
        "augment_views": config.views,
        "views_mode": config.views_mode,
        "augment_seed": config.seed,
    }


def _scrubbed(text: str, slide: Path, config: ExtractionConfig) -> str:
    """``text`` without the slide's path or name when the extraction anonymises."""
    anonymizer = config.tiling.anonymizer()
    return anonymizer.scrub(text, slide) if anonymizer is not None else text


def feature_path(out_dir: Path, slide: Path, tiling: TilingConfig | None = None) -> Path:
    """Where a slide's features go: ``<out_dir>/<slide_stem>.h5`` (the pseudonymous id for
    ``<slide_stem>`` when ``tiling`` anonymises)."""
    return out_dir / f"{slide_name(slide, tiling)}.h5"


#: Tile-file attributes copied into the feature file: what a report needs to name the slide and
#: its scanner.
_CARRIED_TILE_ATTRS = ("slide_sha256", "vendor", "objective_power")


def _image_sizes(folder: TileFolder) -> dict[tuple[int, int], int]:
    """How many of the folder's images have each ``(width, height)``, read from the image
    headers (nothing is decoded); an unreadable header is left to the decode to report."""
    from PIL import Image

    counts: dict[tuple[int, int], int] = {}
    for name in folder.names:
        try:
            with Image.open(folder.path / name) as image:
                size = (int(image.width), int(image.height))
        except (OSError, ValueError, Image.DecompressionBombError):
            continue
        counts[size] = counts.get(size, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: -item[1]))


def _folder_note(attrs: dict[str, Any], n_tiles: int, size: int) -> str:
    """What happened to a tile folder's images, for the user: one bag, and any resizing."""
    note = f"a tile folder is one bag: its {n_tiles} images are one slide"
    sizes = str(attrs.get("source_tile_sizes", ""))
    others = [part for part in sizes.split("; ") if part and not part.startswith(f"{size}x{size} ")]
    if others:
        note += (f"; resized to {size}x{size} px ({attrs.get('resize', '')}) from "
                 f"{'; '.join(others)} tiles")  # fmt: skip
    if attrs.get("left_out_files"):
        note += f"; left out, not tiles: {attrs['left_out_files']}"
    return note


def _plan(
    slide: Path, out_dir: Path, config: ExtractionConfig, encoder: EncoderInfo
) -> tuple[_TileSource, dict[str, Any]]:
    """The slide's tiles (reusing or making tiling output) and their provenance attributes."""
    if slide.is_dir() and slide.suffix.lower() != ".mrxs":
        folder = TileFolder.open(slide)
        sizes = _image_sizes(folder)
        return _FolderTiles(folder, encoder), {
            "tile_size": encoder.input_size,
            "source_tile_sizes": "; ".join(f"{w}x{h} px: {n}" for (w, h), n in sizes.items()),
            "resize": encoder.resize.describe(),
            "left_out_files": "; ".join(f"{name} ({why})" for name, why in folder.left_out),
        }
    tiles_dir = config.tiles_dir if config.tiles_dir is not None else out_dir / "tiles"
    tile_file = output_paths(tiles_dir, slide, config.tiling)["h5"]
    if config.tiles_dir is None and finished_output(tiles_dir, slide, config.tiling) is None:
        tile_slide(slide, tiles_dir, config.tiling)
    elif not tile_file.is_file():
        raise OutputError(
            f"{slide}: no tile file {tile_file}; run `histoguard tile` into {tiles_dir} first, "
            "or leave out --tiles-dir to tile on the fly"
        )
    tiles = read_coords_file(tile_file)
    spec = TileSpec.from_attrs(tiles.attrs)
    carried = {k: tiles.attrs[k] for k in _CARRIED_TILE_ATTRS if k in tiles.attrs}
    attrs: dict[str, Any] = {**spec.to_dict(), **carried, "tiles_file": str(tile_file)}
    # Reader processes already decode in parallel; threads inside them would only oversubscribe
    # the cores the encoder needs.
    threads = 1 if config.readers > 0 else config.tiling.threads
    return _SlideTiles(slide, spec, tiles.coords, config.tiling, threads), attrs


def extract_slide(
    slide: str | Path,
    out_dir: str | Path,
    config: ExtractionConfig,
    *,
    encoder: Encoder | None = None,
    on_progress: ProgressCallback | None = None,
) -> SlideResult:
    """Extract one slide's (or tile folder's) features into ``<out_dir>/<slide_stem>.h5``.

    Skips the slide when a verified feature file made with the same settings exists.

    Args:
        slide: a slide file, or a folder of tile images.
        out_dir: output folder.
        config: extraction settings.
        encoder: an already loaded encoder (else loaded from ``config``).
        on_progress: called as ``on_progress(tiles_done, tiles_total)``.

    Raises:
        SlideError, TilingError, EncoderError: the slide or the encoder cannot be used.
    """
    started = time.perf_counter()
    slide, out_dir = Path(slide), Path(out_dir)
    out_path = feature_path(out_dir, slide, config.tiling)
    remove_stale_temporaries(out_dir, names={out_path.name})
    weights_sha = weights_digest(config.weights)
    key = config.result_key(weights_sha)
    ids = slide_ids(slide, config.tiling)
    expect = {"config_json": key, "slide_path": ids["slide_path"]}
    existing = finished_feature_file(out_path, expect=expect)
    if existing is not None:
        return resumed_result(slide, out_path, len(existing.features), existing.attrs)
    encoder = encoder or load_encoder(
        config.encoder,
        weights=config.weights,
        allow_pickle=config.allow_pickle,
        device=config.device,
    )
    source, tile_attrs = _plan(slide, out_dir, config, encoder.info)
    views = _Views(config.augmentations, config.views, config.seed) if config.views else None
    dataset = _Batches(source, config.batch_size, _stain_transform(config), views)
    n_tiles = len(source.coords)
    features = np.zeros((n_tiles, encoder.embed_dim), dtype=np.float32)
    view_features = np.zeros((config.views, n_tiles, encoder.embed_dim), dtype=np.float32)
    read_ok = np.zeros(n_tiles, dtype=bool)
    errors: list[str] = []
    done = 0
    for indices, tiles, batch_errors, batch_views in _iterate(dataset, config.readers):
        if len(tiles):
            features[indices] = encoder.encode(tiles)
            read_ok[indices] = True
            for k, view in enumerate(batch_views if batch_views is not None else ()):
                view_features[k, indices] = encoder.encode(view)
        errors += batch_errors
        done += len(indices) + len(batch_errors)
        if on_progress is not None:
            on_progress(done, n_tiles)
    tile_names = getattr(getattr(source, "folder", None), "names", None)
    attrs = {
        **tile_attrs,
        "encoder": encoder.info.name,
        "embed_dim": encoder.embed_dim,
        "weights_sha256": weights_sha,
        "stain_normalize": config.stain_normalize or "",
        **ids,
        "n_unreadable_tiles": int((~read_ok).sum()),
        "first_read_error": _scrubbed(errors[0], slide, config) if errors else "",
        "histoguard_version": __version__,
        "config_json": key,
        **_view_attrs(config),
    }
    # A tile folder's image names often repeat the slide's name: anonymised, they say the id.
    names = (
        [_scrubbed(tile_names[i], slide, config) for i in np.flatnonzero(read_ok)]
        if tile_names
        else None
    )
    if not read_ok.any():
        # A slide without a single usable tile is a failure, never an empty "done" bag that
        # training and prediction would trip over later.
        why = (
            f"all {n_tiles} tiles failed to decode (first: {errors[0]})"
            if n_tiles
            else "no tissue tiles: the tiling found nothing to extract"
        )
        return SlideResult(
            slide=slide, status="failed", n_unreadable=n_tiles, flagged=bool(n_tiles),
            message=f"{slide}: {why}; check the slide and the tiling settings",
            seconds=time.perf_counter() - started,
        )  # fmt: skip
    kept, stored_views = features[read_ok], None
    if config.views and config.views_mode == "mean":
        kept = (kept + view_features[:, read_ok].sum(axis=0)) / np.float32(config.views + 1)
    elif config.views:
        stored_views = view_features[:, read_ok]
    write_feature_file(
        out_path, kept, source.coords[read_ok], attrs, tile_names=names, views=stored_views
    )
    folder_note = (
        _folder_note(tile_attrs, n_tiles, encoder.info.input_size)
        if "source_tile_sizes" in tile_attrs
        else ""
    )
    return SlideResult(
        slide=slide,
        status="done",
        output=out_path,
        n_tiles=int(read_ok.sum()),
        n_unreadable=int((~read_ok).sum()),
        flagged=bool(errors),
        message=errors[0] if errors else "",
        seconds=time.perf_counter() - started,
        note=folder_note,
    )
