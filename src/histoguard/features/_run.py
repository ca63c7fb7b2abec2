"""``extract_features``: find the slides in the inputs and hand them to an executor.

Executors (``_local``, ``_dask``) run the per-slide job of ``_extract``; this module is the only
one that chooses between them, and nothing it imports imports it back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from histoguard._version import __version__
from histoguard.core._atomic import remove_stale_temporaries
from histoguard.core._batch import BatchReport, write_run_config
from histoguard.core._lock import run_lock
from histoguard.features._extract import (
    ExtractionConfig,
    check_stain_reference,
    weights_digest,
)
from histoguard.features._local import run_locally
from histoguard.slide._inputs import find_slides, require_slides

SUMMARY_NAME = "extraction_summary.csv"
CONFIG_NAME = "extraction_config.json"


def extract_features(
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    config: ExtractionConfig,
    *,
    scheduler: str | None = None,
    dask_workers: int | None = None,
    progress: bool = False,
) -> BatchReport:
    """Extract features for many slides (or tile folders); failures isolated, reruns resume.

    A folder is expanded into the slide files directly inside it and its sub-folders of tile
    images (one slide each, named after the sub-folder: the usual layout of pre-cut tiles); a
    folder of tile images given itself is one slide.

    Args:
        inputs: slide files, folders of slides, or folders of tile images.
        out_dir: output folder; ``<slide_stem>.h5`` per slide, ``extraction_summary.csv``.
        config: extraction settings.
        scheduler: address of a running Dask scheduler (``tcp://host:8786``); slides become
            tasks on its workers.
        dask_workers: run a local Dask cluster with this many worker processes.
        progress: draw rich progress bars.

    Returns:
        A :class:`BatchReport`.

    Raises:
        NoSlidesError: the inputs hold no slide (nothing is written).
        ConfigError: ``scheduler`` does not answer within 5 s, or the stain reference cannot
            be read or fitted on (nothing is written).
        ConfigError: anonymising (``config.tiling.anonymize``) with the salt or the mapping
            inside ``out_dir``; or a live run with other settings holds ``out_dir`` (its
            ``.histoguard-run.lock``; nothing is written).
        EncoderError: the encoder cannot be loaded.
    """
    if scheduler is not None:
        from histoguard.features._dask import check_scheduler

        check_scheduler(scheduler)  # in seconds, before anything is tiled or written
    check_stain_reference(config)  # once, not as a failure of every slide
    slides = find_slides(inputs, tile_folders=True)
    require_slides(inputs, slides, tile_folders=True)
    out_dir = Path(out_dir)
    anonymizer = config.tiling.anonymizer()
    if anonymizer is not None:
        anonymizer.check_outside(out_dir)
        anonymizer.record(slides)
    out_dir.mkdir(parents=True, exist_ok=True)
    key = config.result_key(weights_digest(config.weights))
    with run_lock(out_dir, key):  # ConfigError: a live run with other settings holds it
        for folder in (out_dir, out_dir / "tiles"):  # on-the-fly tiles: under out_dir/tiles
            if folder.is_dir():
                remove_stale_temporaries(folder)  # every provably dead one
        saved = {"histoguard_version": __version__, **asdict(config)}
        saved["tiling"] = config.tiling.public_dict()
        write_run_config(out_dir / CONFIG_NAME, saved, key)
        summary_path = out_dir / SUMMARY_NAME
        if scheduler is not None or dask_workers:
            from histoguard.features._dask import run_on_dask

            return run_on_dask(
                slides, out_dir, config, scheduler=scheduler, n_workers=dask_workers or 2,
                summary_path=summary_path, progress=progress,
            )  # fmt: skip
        return run_locally(slides, out_dir, config, summary_path=summary_path, progress=progress)
