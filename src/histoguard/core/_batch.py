"""Running one job over many slides: failures isolated per slide, a summary after every slide.

Shared by tiling and feature extraction. Each job supplies a function that processes one slide
(and decides itself whether existing output lets it skip); this module does the rest: progress
bars, name collisions, per-slide locks (two runs on one output folder never work on the same
slide at once: the second marks it ``locked`` and goes on), error isolation, and the atomically
rewritten summary table.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from histoguard.core._atomic import write_bytes_atomic
from histoguard.core._lock import LockHolder, lock_path, slide_lock
from histoguard.core._owner import LEASE_SECONDS
from histoguard.core._privacy import Anonymizer
from histoguard.errors import HistoguardError

Status = Literal["done", "skipped", "failed", "locked"]
STATUSES: tuple[Status, ...] = ("done", "skipped", "failed", "locked")
ProgressCallback = Callable[[int, int], None]
SlideJob = Callable[[Path, ProgressCallback], "SlideResult"]

SUMMARY_COLUMNS = (
    "slide", "status", "flagged", "n_tiles", "n_unreadable", "n_constant", "n_duplicate",
    "seconds", "output", "message", "note",
)  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class SlideResult:
    """What happened to one slide.

    Attributes:
        slide: the input path.
        status: ``done`` (processed now and verified), ``skipped`` (verified output with the
            same settings already existed), ``failed``, or ``locked`` (another run was working
            on it; left to that run, and a rerun picks it up if that run did not finish it).
        output: the slide's main output file, None when failed.
        n_tiles: tiles in the output.
        n_unreadable: tiles that failed to decode and were left out.
        n_constant: tiles on tissue that decoded to one colour (a zero-filled or blank region)
            and were left out.
        n_duplicate: tiles on tissue whose pixels repeat another tile's exactly (positions
            pointing at the same stored tile) and were left out.
        flagged: True when the slide is damaged in places (some tiles unreadable, constant or
            duplicated).
        message: the error for failed slides; for flagged ones the first decode error and what
            was left out.
        seconds: wall time spent on this slide.
        note: what was done to the input that the user should know (e.g. tile images resized
            from another size), empty when nothing.
    """

    slide: Path
    status: Status
    output: Path | None = None
    n_tiles: int = 0
    n_unreadable: int = 0
    n_constant: int = 0
    n_duplicate: int = 0
    flagged: bool = False
    message: str = ""
    seconds: float = 0.0
    note: str = ""


@dataclass(frozen=True)
class BatchReport:
    """The outcome of a batch, with the summary table's location."""

    results: tuple[SlideResult, ...]
    summary_path: Path

    @property
    def failed(self) -> tuple[SlideResult, ...]:
        """Results with status ``failed``."""
        return tuple(r for r in self.results if r.status == "failed")

    def counts(self) -> dict[str, int]:
        """Number of slides per status, plus ``flagged``."""
        counts: dict[str, int] = dict.fromkeys(STATUSES, 0)
        for result in self.results:
            counts[result.status] += 1
        counts["flagged"] = sum(r.flagged for r in self.results)
        return counts


def failed_result(slide: Path, error: BaseException, started: float) -> SlideResult:
    """A ``failed`` result whose message names the slide and the error."""
    message = (
        str(error)
        if isinstance(error, HistoguardError)
        else (f"{slide}: unexpected {type(error).__name__}: {error}")
    )
    return SlideResult(
        slide=slide, status="failed", message=message, seconds=time.perf_counter() - started
    )


def locked_result(slide: Path, holder: LockHolder, lock: Path) -> SlideResult:
    """A ``locked`` result: another run holds the slide's lock file ``lock``."""
    return SlideResult(
        slide=slide,
        status="locked",
        message=f"{slide}: skipped, another run is working on it ({holder.describe()}); "
        "rerun once it has finished to pick up anything it did not complete. If that run is "
        f"gone (killed on another machine: its lock is kept {LEASE_SECONDS // 3600} h), "
        f"delete {lock} and rerun",
    )


def name_collisions(slides: Iterable[Path]) -> dict[Path, SlideResult]:
    """Failed results for slides whose stem repeats an earlier one (outputs would collide)."""
    seen: dict[str, Path] = {}
    clashes: dict[Path, SlideResult] = {}
    for slide in slides:
        if slide.stem in seen:
            clashes[slide] = SlideResult(
                slide=slide,
                status="failed",
                message=f"{slide}: has the same name as {seen[slide.stem]}; outputs would "
                "collide. Rename one of them or process them into different folders",
            )
        else:
            seen[slide.stem] = slide
    return clashes


def run_batch(
    slides: Sequence[Path],
    summary_path: Path,
    job: SlideJob,
    *,
    progress: bool = False,
    unit: str = "tiles",
    anonymizer: Anonymizer | None = None,
) -> BatchReport:
    """Run ``job`` on every slide in turn; one slide's failure never stops the others.

    Each slide is worked on under its lock ``.STEM.lock`` in the summary's folder (see
    :mod:`histoguard.core._lock`): a slide whose lock a live run holds is not touched and gets
    status ``locked``; a lock left by a dead run is taken over.

    Args:
        slides: inputs, processed in order.
        summary_path: CSV rewritten atomically after every slide; its folder holds the locks.
        job: ``job(slide, on_progress) -> SlideResult``; exceptions become ``failed`` results.
        progress: draw rich progress bars (slides, and ``unit`` within a slide).
        unit: what the inner progress bar counts.
        anonymizer: when given, the progress bars, the summary and the returned results name
            each slide by its pseudonymous id only (see :func:`redact_result`).
    """
    results: list[SlideResult] = []
    clashes = name_collisions(slides)
    lock_dir = summary_path.parent
    lock_dir.mkdir(parents=True, exist_ok=True)
    with progress_bars(progress) as bars:
        slides_task = bars.add_task("slides", total=len(slides))
        inner = bars.add_task(unit, total=None, visible=False)

        def on_progress(done: int, total: int) -> None:
            bars.update(inner, completed=done, total=total, visible=True)

        for slide in slides:
            # Under --anonymize the bar and the lock file, too, name the slide by its id.
            key = anonymizer.id_for(slide) if anonymizer else slide.stem
            bars.update(inner, description=key if anonymizer else slide.name, completed=0,
                        total=None)  # fmt: skip
            result = clashes.get(slide) or _run_locked(slide, key, job, lock_dir, on_progress)
            results.append(redact_result(result, anonymizer))
            write_summary(summary_path, results)
            bars.advance(slides_task)
    return BatchReport(results=tuple(results), summary_path=summary_path)


def _run_locked(
    slide: Path, key: str, job: SlideJob, lock_dir: Path, on_progress: ProgressCallback
) -> SlideResult:
    """``job(slide)`` under the lock ``.KEY.lock``; ``locked`` if another run holds it,
    ``failed`` with the error if anything (the lock included) raises."""
    started = time.perf_counter()
    try:
        with slide_lock(lock_dir, key) as lock:
            if isinstance(lock, LockHolder):
                return locked_result(slide, lock, lock_path(lock_dir, key))

            def progress_and_refresh(done: int, total: int) -> None:
                on_progress(done, total)
                lock.refresh()

            return job(slide, progress_and_refresh)
    except Exception as error:  # a batch must survive anything one slide throws
        return failed_result(slide, error, started)


def redact_result(result: SlideResult, anonymizer: Anonymizer | None) -> SlideResult:
    """``result`` naming its slide by the pseudonymous id only: ``slide`` becomes the bare id,
    and the slide's path, name and stem in ``message`` and ``note`` are replaced by it
    (``output`` is already named by the id). Unchanged without an anonymizer."""
    if anonymizer is None:
        return result
    return replace(
        result,
        slide=Path(anonymizer.id_for(result.slide)),
        message=anonymizer.scrub(result.message, result.slide),
        note=anonymizer.scrub(result.note, result.slide),
    )


def write_summary(path: Path, results: Sequence[SlideResult]) -> None:
    """Write the batch summary table (CSV, one row per slide) atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(SUMMARY_COLUMNS)
    for r in results:
        writer.writerow(
            [r.slide, r.status, r.flagged, r.n_tiles, r.n_unreadable, r.n_constant,
             r.n_duplicate, f"{r.seconds:.2f}", r.output or "", r.message, r.note]
        )  # fmt: skip
    write_bytes_atomic(path, buffer.getvalue().encode())


def write_run_config(path: Path, values: dict[str, Any], key: str) -> None:
    """Save a batch's settings as ``path`` (JSON, atomically), never hiding earlier ones.

    ``values`` are saved with ``result_key`` = ``key`` (what decides the outputs). When the
    file already names other settings (another key) and its folder holds finished outputs
    (``*.h5``), those settings are kept, newest last, in ``earlier_settings``: outputs made
    with them may remain (each ``.h5`` records its own settings, and a rerun re-makes those
    that differ), so the file describes every settings set the folder's outputs may have.
    """
    earlier: list[Any] = []
    with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
        old = json.loads(path.read_text(encoding="utf-8"))
        earlier = list(old.pop("earlier_settings", []))
        plain = json.loads(json.dumps(values, default=str))  # as the file holds them
        if "result_key" in old:
            same = old["result_key"] == key
        else:  # written by an older version: compare what it saved
            same = _unversioned(old) == _unversioned(plain)
        if not same and any(path.parent.glob("*.h5")):
            earlier.append(old)
    record = {**values, "result_key": key}
    if earlier:
        record["earlier_settings"] = earlier
    text = json.dumps(record, indent=2, default=str) + "\n"
    write_bytes_atomic(path, text.encode())


def _unversioned(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if k not in ("histoguard_version", "result_key")}


def progress_bars(enabled: bool) -> Any:
    """A rich Progress with description, bar, count, elapsed and remaining time columns."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description:<28}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
    )
