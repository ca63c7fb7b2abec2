"""Feature extraction on a Dask cluster: one task per slide, one encoder per worker.

A local cluster by default; any scheduler by address (for Slurm, start one with dask-jobqueue's
``SLURMCluster`` and pass its ``scheduler_address``). A worker that dies takes only its current
slide with it: Dask reschedules that task on another worker, and because outputs are written
atomically the slide still ends with exactly one verified feature file.

Dask's own log lines ("Worker process still alive after 4.0 seconds, killing", ...) are hidden
while histoguard runs a cluster, unless the ``histoguard`` logger is at INFO or lower
(``histoguard --verbose``), see :func:`quiet_dask_logs`.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from histoguard.core._batch import (
    BatchReport,
    SlideResult,
    failed_result,
    name_collisions,
    progress_bars,
    redact_result,
    write_summary,
)
from histoguard.encoders import Encoder, load_encoder
from histoguard.errors import ConfigError, HistoguardError
from histoguard.features._extract import ExtractionConfig, extract_slide

logger = logging.getLogger(__name__)

_ENCODERS: dict[tuple[str, str, str], Encoder] = {}
_ENCODERS_LOCK = threading.Lock()


#: Seconds :func:`check_scheduler` waits for a scheduler to accept a connection.
SCHEDULER_TIMEOUT_S = 5.0

#: Dask's default scheduler port, for an address given without one.
_DEFAULT_SCHEDULER_PORT = 8786


def check_scheduler(address: str, timeout_s: float = SCHEDULER_TIMEOUT_S) -> None:
    """Refuse a scheduler address that does not accept a TCP connection within ``timeout_s``
    seconds, before any slide is tiled (Dask itself would wait 30 s, then fail with a
    traceback). Only ``tcp://`` and ``tls://`` addresses (and bare ``host:port``) are probed;
    other transports are left to Dask.

    Raises:
        ConfigError: the address cannot be parsed, its host not resolved, or nothing answers
            there; the message says how to start a scheduler or run without one.
    """
    from distributed.comm.addressing import parse_address, parse_host_port

    fix = (
        "start one there (`dask scheduler --port PORT`, or dask-jobqueue on Slurm), check the "
        "address, or leave out --scheduler (--workers N runs a local cluster)"
    )
    try:
        scheme, location = parse_address(address)
        if scheme not in ("tcp", "tls"):
            return
        host, port = parse_host_port(location, default_port=_DEFAULT_SCHEDULER_PORT)
    except ValueError as error:
        raise ConfigError(
            f"scheduler address {address!r} is not valid ({error}); write it as tcp://HOST:PORT"
        ) from None
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except TimeoutError:
        raise ConfigError(
            f"no Dask scheduler answered at {address} within {timeout_s:g} s; {fix}"
        ) from None
    except OSError as error:
        reason = error.strerror or str(error)
        raise ConfigError(f"cannot reach a Dask scheduler at {address} ({reason}); {fix}") from None


def _worker_encoder(config: ExtractionConfig) -> Encoder:
    """The encoder for ``config``, loaded once per worker process and then reused."""
    key = (config.encoder, str(config.weights), config.device)
    with _ENCODERS_LOCK:
        if key not in _ENCODERS:
            _ENCODERS[key] = load_encoder(
                config.encoder,
                weights=config.weights,
                allow_pickle=config.allow_pickle,
                device=config.device,
            )
        return _ENCODERS[key]


def _extract_task(slide: Path, out_dir: Path, config: ExtractionConfig) -> SlideResult:
    started = time.perf_counter()
    try:
        # Dask worker processes are daemons and cannot start reader processes: read in threads.
        return extract_slide(
            slide, out_dir, replace(config, readers=0), encoder=_worker_encoder(config)
        )
    except HistoguardError as error:
        # An ordinary slide failure is a result, not a task error: Dask would print the
        # worker's traceback and retry a slide that fails the same way again.
        return failed_result(slide, error, started)


@contextmanager
def quiet_dask_logs() -> Iterator[int]:
    """Hide Dask's (``distributed``'s) log records below ERROR and its warnings, for the block.

    Nothing is hidden when the ``histoguard`` logger's effective level is INFO or lower: whoever
    asked for histoguard's progress messages also sees Dask's. Levels and warning filters are
    restored on exit.

    Yields:
        The level for Dask's own ``silence_logs`` (worker and nanny processes): ERROR when
        hiding, WARNING (Dask's default) otherwise.
    """
    if logging.getLogger("histoguard").getEffectiveLevel() <= logging.INFO:
        yield logging.WARNING
        return
    names = ["distributed"] + [
        name for name in logging.root.manager.loggerDict if name.startswith("distributed.")
    ]
    loggers = [logging.getLogger(name) for name in names]
    saved = [(log, log.level) for log in loggers]
    try:
        for log in loggers:
            if log is loggers[0] or log.level != logging.NOTSET:
                log.setLevel(max(log.getEffectiveLevel(), logging.ERROR))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"distributed(\.|$)")
            yield logging.ERROR
    finally:
        for log, level in saved:
            log.setLevel(level)


def run_on_dask(
    slides: Sequence[Path],
    out_dir: Path,
    config: ExtractionConfig,
    *,
    scheduler: str | None,
    n_workers: int,
    summary_path: Path,
    progress: bool,
    retries: int = 1,
) -> BatchReport:
    """Extract ``slides`` as Dask tasks; results in completion order, summary after each.

    Args:
        slides: inputs (files or tile folders).
        out_dir: output folder.
        config: extraction settings.
        scheduler: a scheduler address, or None for a local cluster of ``n_workers`` processes
            with one thread each.
        n_workers: local cluster size.
        summary_path: where the CSV summary goes.
        progress: draw a progress bar over slides.
        retries: extra attempts for a slide whose task raised.
    """
    with quiet_dask_logs() as dask_log_level:
        return _run(
            slides, out_dir, config, scheduler=scheduler, n_workers=n_workers,
            summary_path=summary_path, progress=progress, retries=retries,
            dask_log_level=dask_log_level,
        )  # fmt: skip


def _run(
    slides: Sequence[Path],
    out_dir: Path,
    config: ExtractionConfig,
    *,
    scheduler: str | None,
    n_workers: int,
    summary_path: Path,
    progress: bool,
    retries: int,
    dask_log_level: int,
) -> BatchReport:
    from distributed import Client, LocalCluster, as_completed

    cluster: Any = None
    if scheduler is None:
        cluster = LocalCluster(
            n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None,
            silence_logs=dask_log_level,
        )  # fmt: skip
        client = Client(cluster)
    else:
        client = Client(scheduler)
    anonymizer = config.tiling.anonymizer()
    clashes = name_collisions(slides)
    results: list[SlideResult] = list(clashes.values())
    started = time.perf_counter()
    try:
        futures = {
            client.submit(_extract_task, slide, out_dir, config, pure=False, retries=retries): slide
            for slide in slides
            if slide not in clashes
        }
        with progress_bars(progress) as bars:
            task = bars.add_task("slides (dask)", total=len(slides))
            bars.advance(task, len(clashes))
            for future in as_completed(futures):
                slide = futures[future]
                try:
                    result = future.result()
                except Exception as error:  # a lost or failing task fails only its slide
                    result = failed_result(slide, error, started)
                shown = redact_result(result, anonymizer)
                logger.info("%s: %s %s", shown.slide, shown.status, shown.message)
                results.append(result)
                write_summary(summary_path, [redact_result(r, anonymizer) for r in results])
                bars.advance(task)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    order = {slide: i for i, slide in enumerate(slides)}
    results.sort(key=lambda r: order[r.slide])
    results = [redact_result(r, anonymizer) for r in results]
    write_summary(summary_path, results)
    return BatchReport(results=tuple(results), summary_path=summary_path)
