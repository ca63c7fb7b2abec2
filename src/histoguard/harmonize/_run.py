"""Harmonise a folder of feature files: fit on a cohort's training centers (or apply a saved
harmoniser), write the harmonised files under the same names, one slide at a time.

The cohort table (CSV, or TSV by its ``.tsv`` suffix) has one row per slide: ``slide_id`` and
``center`` (required), ``split`` (optional: the fit uses the ``train`` rows; without the column
every row trains) and ``label`` (optional: the training rows' labels are kept as covariates).
Feature files are ``FEATURES/<slide_id>.h5``.

Outputs in ``OUT``: ``<slide_id>.h5`` per slide (histoguard's feature-file format, the source's
provenance attributes kept, plus ``harmonizer``: method and the harmoniser's SHA-256, and
``harmonizer_sha256`` / ``source_content_sha256`` that a rerun checks to skip finished slides);
``harmonizer/`` (the harmoniser used, :func:`save_harmonizer`); ``harmonize_summary.csv`` (one
row per slide) and ``harmonize_config.json``. Every file is written atomically; a slide that
fails is reported in the summary and the others go on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from histoguard._version import __version__
from histoguard.core._atomic import remove_stale_temporaries, write_bytes_atomic
from histoguard.core._batch import BatchReport, ProgressCallback, SlideResult, run_batch
from histoguard.core._names import feature_file
from histoguard.core._tables import read_delimited, slide_id_problem
from histoguard.errors import ConfigError, OutputError, TooFewSlidesError
from histoguard.features._feature_file import (
    WRITER_ATTRS,
    feature_file_done,
    read_feature_file,
    write_feature_file,
)
from histoguard.harmonize._harmonizer import (
    FIT_TILES_PER_SLIDE,
    MIN_NEW_CENTER_SLIDES,
    Harmonizer,
    Method,
    design_from_labels,
    tile_sample,
)
from histoguard.harmonize._io import (
    HARMONIZER_ARRAYS,
    HARMONIZER_DIR,
    HARMONIZER_JSON,
    load_harmonizer,
    save_harmonizer,
)

logger = logging.getLogger(__name__)

SUMMARY_NAME = "harmonize_summary.csv"
CONFIG_NAME = "harmonize_config.json"


@dataclass(frozen=True, kw_only=True)
class HarmonizeConfig:
    """Settings of :func:`harmonize_feature_files`.

    Attributes:
        method: ``"combat"`` or ``"covbat"``.
        parametric: parametric (True) or non-parametric empirical Bayes.
        max_tiles_per_slide: tiles per slide the fit reads at most (a seeded sample, so each
            slide weighs about the same); every tile is transformed.
        covariates: keep the training rows' ``label`` as covariates when the table has labels.
        label_free: read no label at all, and fit every center of the table that the
            harmoniser does not know from its own slides (:meth:`Harmonizer.fit_new_center`).
        min_slides: fewest slides of such a new center.
        seed: seeds the tile sample of the fit.

    Raises:
        ConfigError: a count below 1.
    """

    method: Method = "combat"
    parametric: bool = True
    max_tiles_per_slide: int = FIT_TILES_PER_SLIDE
    covariates: bool = True
    label_free: bool = False
    min_slides: int = MIN_NEW_CENTER_SLIDES
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_tiles_per_slide < 1 or self.min_slides < 1:
            raise ConfigError(
                f"max_tiles_per_slide and min_slides must be at least 1, got "
                f"{self.max_tiles_per_slide} and {self.min_slides}"
            )


@dataclass(frozen=True)
class HarmonizeReport:
    """What :func:`harmonize_feature_files` did.

    Attributes:
        batch: per-slide results and the summary table's path.
        harmonizer: the harmoniser applied (fitted, loaded, or loaded and extended).
        harmonizer_dir: where it was saved (``OUT/harmonizer``).
        harmonizer_sha256: SHA-256 of its two saved files, recorded in every output file.
        fitted_slides: the slides the fit read (empty when a saved harmoniser was applied).
        new_centers: centers fitted label-free in this run.
        warnings: warnings for the user (label-free fits, slides left out of the fit).
    """

    batch: BatchReport
    harmonizer: Harmonizer
    harmonizer_dir: Path
    harmonizer_sha256: str
    fitted_slides: tuple[str, ...]
    new_centers: tuple[str, ...]
    warnings: tuple[str, ...]


@dataclass(frozen=True)
class _Slide:
    slide_id: str
    center: str
    split: str | None
    label: str | None


def harmonize_feature_files(
    features: str | Path,
    cohort: str | Path,
    out: str | Path,
    *,
    config: HarmonizeConfig | None = None,
    apply: str | Path | None = None,
    progress: bool = False,
) -> HarmonizeReport:
    """Harmonise every slide of ``cohort`` from ``features`` into ``out``.

    Without ``apply`` a :class:`Harmonizer` is fitted on the training rows' tiles (at most
    ``config.max_tiles_per_slide`` per slide); with ``apply`` the harmoniser saved there is
    used. Slides of a center the harmoniser does not know fail one by one, unless
    ``config.label_free`` fits that center from its own slides (with a warning). A rerun skips
    slides whose output was written by the same harmoniser from the same source file.

    Args:
        features: folder of ``<slide_id>.h5`` feature files.
        cohort: the cohort table (see the module docs).
        out: output folder (not ``features``).
        config: settings (defaults if None).
        apply: folder of a saved harmoniser (``harmonizer.json`` + ``.safetensors``).
        progress: draw progress bars.

    Returns:
        A :class:`HarmonizeReport`; its ``batch`` lists every slide.

    Raises:
        ConfigError: the table is unusable, ``out`` is ``features``, no training slide could
            be read, or the fit is impossible (the message says why and what to do).
    """
    config = config or HarmonizeConfig()
    features, out = Path(features), Path(out)
    if out.resolve() == features.resolve():
        raise ConfigError(f"--out {out} is the --features folder; write to another folder")
    slides = _read_cohort(Path(cohort), labels=not config.label_free)
    messages: list[str] = []
    failures: dict[str, str] = {}
    fitted: tuple[str, ...] = ()
    if apply is None:
        harmonizer, fitted = _fit(features, Path(cohort), slides, config, messages)
    else:
        harmonizer = load_harmonizer(apply)
    new_centers = _new_centers(features, slides, harmonizer, config, failures, messages)
    out.mkdir(parents=True, exist_ok=True)
    save_harmonizer(harmonizer, out / HARMONIZER_DIR)
    sha = harmonizer_sha256(out / HARMONIZER_DIR)
    settings = {"histoguard_version": __version__, **asdict(config), "features": str(features),
                "cohort": str(cohort), "apply": None if apply is None else str(apply),
                "harmonizer_sha256": sha, "fitted_slides": list(fitted),
                "new_centers": list(new_centers)}  # fmt: skip
    remove_stale_temporaries(out, names={CONFIG_NAME, SUMMARY_NAME})  # a killed run's
    write_bytes_atomic(out / CONFIG_NAME, (json.dumps(settings, indent=1) + "\n").encode())
    kind = "parametric" if harmonizer.parametric else "non-parametric"
    tag = f"{harmonizer.method} ({kind}) sha256:{sha}"
    by_path = {feature_file(features, s.slide_id): s for s in slides}

    def job(path: Path, on_progress: ProgressCallback) -> SlideResult:
        slide = by_path[path]
        if slide.slide_id in failures:
            raise ConfigError(failures[slide.slide_id])
        return _harmonize_slide(path, out / path.name, slide, harmonizer, tag, sha)

    batch = run_batch(list(by_path), out / SUMMARY_NAME, job, progress=progress, unit="slides")
    return HarmonizeReport(
        batch=batch,
        harmonizer=harmonizer,
        harmonizer_dir=out / HARMONIZER_DIR,
        harmonizer_sha256=sha,
        fitted_slides=fitted,
        new_centers=new_centers,
        warnings=tuple(messages),
    )


def harmonizer_sha256(directory: str | Path) -> str:
    """SHA-256 (hex) of a saved harmoniser: its JSON, then its arrays file."""
    digest = hashlib.sha256()
    for name in (HARMONIZER_JSON, HARMONIZER_ARRAYS):
        digest.update((Path(directory) / name).read_bytes())
    return digest.hexdigest()


def _read_cohort(path: Path, *, labels: bool) -> list[_Slide]:
    """The table's slides; the ``label`` column is read only when ``labels``."""
    header, rows = read_delimited(path, error=ConfigError, rows_are="slide")
    missing = [name for name in ("slide_id", "center") if name not in header]
    if missing:
        raise ConfigError(
            f"{path}: no column {missing}; the table needs slide_id and center (split and "
            "label are optional)"
        )
    names = ("slide_id", "center", "split")
    column = {name: header.index(name) for name in names if name in header}
    if labels and "label" in header:
        column["label"] = header.index("label")
    problems, seen, slides = [], set(), []
    for number, cells in rows:
        cell = {k: (cells[i] if i < len(cells) else "") for k, i in column.items()}
        sid = cell["slide_id"]
        if not sid or not cell["center"]:
            problems.append(f"row {number}: empty slide_id or center")
        elif bad_id := slide_id_problem(sid):
            problems.append(f"row {number}: {bad_id}")
        elif sid in seen:
            problems.append(f"row {number}: slide {sid!r} listed twice")
        seen.add(sid)
        split = cell.get("split") or None
        slides.append(_Slide(sid, cell["center"], split, cell.get("label") or None))
    if problems:
        raise ConfigError(f"{path}: " + "; ".join(problems[:10]) + "; fix these rows")
    if not slides:
        raise ConfigError(f"{path}: no slides listed; add one row per slide")
    return slides


def _sample(path: Path, max_tiles: int, rng: np.random.Generator) -> np.ndarray:
    return tile_sample(read_feature_file(path).features, max_tiles, rng)


def _fit(
    features: Path,
    cohort: Path,
    slides: Sequence[_Slide],
    config: HarmonizeConfig,
    messages: list[str],
) -> tuple[Harmonizer, tuple[str, ...]]:
    """Fit on the training rows (``split == "train"``, or all rows without a split column)."""
    has_split = any(s.split is not None for s in slides)
    train = [s for s in slides if s.split == "train"] if has_split else list(slides)
    if not train:
        raise ConfigError(f"{cohort}: no row has split 'train'; the fit needs training slides")
    rng = np.random.default_rng(config.seed)
    parts, used = [], []
    for slide in train:
        try:
            path = feature_file(features, slide.slide_id)
            parts.append(_sample(path, config.max_tiles_per_slide, rng))
        except OutputError as error:
            messages.append(f"slide {slide.slide_id!r} left out of the fit: {error}")
            continue
        used.append(slide)
    if not used:
        raise ConfigError(f"{features}: no training slide of {cohort} could be read")
    x = np.vstack(parts)
    centers = np.concatenate([[s.center] * len(p) for s, p in zip(used, parts, strict=True)])
    covariates = None
    labelled = config.covariates and all(s.label is not None for s in used)
    if labelled:
        labels = np.concatenate([[s.label] * len(p) for s, p in zip(used, parts, strict=True)])
        covariates = design_from_labels(labels)
    harmonizer = Harmonizer(method=config.method, parametric=config.parametric)
    try:
        harmonizer.fit(x, centers, covariates)
    except ConfigError as error:
        fix = "; rerun without label covariates (--no-covariates)" if covariates is not None else ""
        raise ConfigError(f"{cohort}: cannot fit the harmoniser: {error}{fix}") from None
    logger.info("harmoniser fitted on %d tiles of %d slides", len(x), len(used))
    return harmonizer, tuple(s.slide_id for s in used)


def _new_centers(
    features: Path,
    slides: Sequence[_Slide],
    harmonizer: Harmonizer,
    config: HarmonizeConfig,
    failures: dict[str, str],
    messages: list[str],
) -> tuple[str, ...]:
    """Fit the table's unknown centers label-free, or mark their slides as failed."""
    known = harmonizer.centers
    unknown = sorted({s.center for s in slides} - set(known))
    added = []
    rng = np.random.default_rng(config.seed)
    for center in unknown:
        members = [s for s in slides if s.center == center]
        if not config.label_free:
            for s in members:
                failures[s.slide_id] = (
                    f"slide {s.slide_id!r}: center {center!r} is not in the harmoniser (known: "
                    f"{', '.join(known)}); rerun with --label-free to fit it from its own "
                    f"slides (at least {config.min_slides}), or put some of its slides in the "
                    "training split"
                )
            continue
        parts, ids = [], []
        for s in members:
            try:
                part = _sample(feature_file(features, s.slide_id), config.max_tiles_per_slide, rng)
            except OutputError:
                continue  # the slide's own job reports it
            parts.append(part)
            ids += [s.slide_id] * len(part)
        try:
            if not parts:
                raise TooFewSlidesError(center, 0, config.min_slides)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                harmonizer.fit_new_center(
                    np.vstack(parts), center, slides=ids, min_slides=config.min_slides
                )
        except TooFewSlidesError as error:
            for s in members:
                failures[s.slide_id] = f"slide {s.slide_id!r}: {error}"
            continue
        messages += [str(w.message) for w in caught]
        added.append(center)
    return tuple(added)


def _harmonize_slide(
    source_path: Path,
    out_path: Path,
    slide: _Slide,
    harmonizer: Harmonizer,
    tag: str,
    sha: str,
) -> SlideResult:
    started = time.perf_counter()
    source = read_feature_file(source_path)
    expect: dict[str, Any] = {
        "harmonizer_sha256": sha,
        "source_content_sha256": source.attrs.get("content_sha256"),
    }
    n = len(source.features)
    if feature_file_done(out_path, expect=expect):
        return SlideResult(slide=source_path, status="skipped", output=out_path, n_tiles=n,
                           seconds=time.perf_counter() - started)  # fmt: skip
    harmonised = harmonizer.transform(source.features, [slide.center] * n)
    coords = source.coords
    if coords is None:  # another tool's file without coordinates: rows by index, as tile folders
        coords = np.stack([np.arange(n), np.zeros(n, dtype=np.int64)], axis=1)
    attrs = {k: v for k, v in source.attrs.items() if k not in WRITER_ATTRS}
    attrs |= {"harmonizer": tag, **expect, "harmonized_center": slide.center}
    write_feature_file(out_path, harmonised, coords, attrs, tile_names=source.tile_names)
    return SlideResult(slide=source_path, status="done", output=out_path, n_tiles=n,
                       seconds=time.perf_counter() - started)  # fmt: skip
