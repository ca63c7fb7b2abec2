"""Reading the delimited tables users write by hand or export from spreadsheets."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path


def read_delimited(
    path: Path, *, error: Callable[[str], Exception], rows_are: str = "item"
) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The stripped header and ``(row number, stripped cells)`` of every non-blank data row of
    a CSV table (tab-separated when the file ends in ``.tsv``). Row numbers are the ones a
    spreadsheet shows (the header is row 1).

    Args:
        path: the table.
        error: builds the exception to raise from a message (the caller's error type).
        rows_are: what one row describes, for the message about an empty table.

    Raises:
        Whatever ``error`` builds: the file is missing, not UTF-8 CSV, or empty.
    """
    if not path.is_file():
        raise error(f"{path}: table not found; check the path")
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        # utf-8-sig: spreadsheet programs often prepend a byte-order mark to the header.
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle, delimiter=delimiter)
            lines = [(i, [c.strip() for c in cells]) for i, cells in enumerate(reader, start=1)]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise error(f"{path}: cannot be read as UTF-8 CSV ({exc}); save it as UTF-8 CSV") from exc
    if not lines or not any(lines[0][1]):
        raise error(f"{path}: the table is empty; it needs a header and one row per {rows_are}")
    return lines[0][1], [(i, cells) for i, cells in lines[1:] if any(cells)]


#: Cell values spreadsheets and pandas write for "no value"; never a class name.
MISSING_MARKERS = frozenset({"nan", "na", "n/a", "null", "none", "<na>"})


def slide_id_problem(slide_id: str) -> str | None:
    """Why ``slide_id`` cannot become a file name, or None when it can.

    Tables name files by slide id (``<folder>/<slide_id>.h5``, the id bounded by
    :func:`~histoguard.core._names.feature_file`); an id with a path separator,
    ``..``, a drive or an absolute path would read or write outside the given folder.
    """
    if not slide_id:
        return "empty slide_id"
    if (
        "/" in slide_id
        or "\\" in slide_id
        or ":" in slide_id
        or "\x00" in slide_id
        or slide_id in (".", "..")
        or slide_id.startswith("..")
    ):
        return (
            f"slide_id {slide_id!r} is not a plain file name (no '/', '\\', ':', '..'); "
            "rename the slide"
        )
    return None


def read_slide_centers(path: Path) -> dict[str, str]:
    """``slide_id -> center`` from a table with ``slide_id`` and ``center`` columns (a cohort
    table will do); rows with an empty center are left out.

    Raises:
        ConfigError: the file is missing or unreadable, or lacks either column.
    """
    from histoguard.errors import ConfigError

    header, rows = read_delimited(Path(path), error=ConfigError, rows_are="slide")
    missing = [name for name in ("slide_id", "center") if name not in header]
    if missing:
        raise ConfigError(f"{path}: no column {missing}; the table needs slide_id and center")
    sid, center = header.index("slide_id"), header.index("center")
    return {
        cells[sid]: cells[center]
        for _, cells in rows
        if len(cells) > max(sid, center) and cells[center]
    }
