"""The local executor: slides one after another in this process, the encoder loaded once."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from histoguard.core._batch import BatchReport, ProgressCallback, SlideResult, run_batch
from histoguard.encoders import load_encoder
from histoguard.features._extract import ExtractionConfig, extract_slide

logger = logging.getLogger(__name__)


def run_locally(
    slides: Sequence[Path],
    out_dir: Path,
    config: ExtractionConfig,
    *,
    summary_path: Path,
    progress: bool,
) -> BatchReport:
    """Extract ``slides`` in order; a failing slide is recorded and the batch goes on.

    Args:
        slides: inputs (slide files or tile folders).
        out_dir: output folder.
        config: extraction settings.
        summary_path: the summary table, rewritten atomically after every slide.
        progress: draw rich progress bars.

    Raises:
        EncoderError: the encoder cannot be loaded (nothing can run without it).
    """
    encoder = load_encoder(
        config.encoder,
        weights=config.weights,
        allow_pickle=config.allow_pickle,
        device=config.device,
    )

    anonymizer = config.tiling.anonymizer()

    def job(slide: Path, on_progress: ProgressCallback) -> SlideResult:
        shown = anonymizer.id_for(slide) if anonymizer else str(slide)
        try:
            result = extract_slide(slide, out_dir, config, encoder=encoder, on_progress=on_progress)
        except Exception as error:
            why = anonymizer.scrub(str(error), slide) if anonymizer else error
            logger.info("%s: extraction failed: %s", shown, why)
            raise
        logger.info("%s: %s, %d tiles", shown, result.status, result.n_tiles)
        return result

    return run_batch(slides, summary_path, job, progress=progress, anonymizer=anonymizer)
