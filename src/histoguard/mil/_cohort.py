"""Cohort tables: one row per slide, validated completely before any training starts.

A cohort table is a CSV (or Parquet, when ``pyarrow`` is installed) with the columns

    slide_id    required, unique
    label       required, the class name
    patient_id  optional; defaults to the slide_id (with a warning: splits are then by slide)
    center      optional, the hospital / scanner site
    split       optional, one of train / val / calibration / test, the same for all slides of a
                patient
    path        optional, the slide or feature file; relative paths resolve against the
                table's folder

Loading collects every problem in the table into one :class:`CohortError`, so a user fixes the
table once instead of once per problem.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from histoguard.core._names import feature_file
from histoguard.core._tables import MISSING_MARKERS, read_delimited, slide_id_problem
from histoguard.errors import CohortError

#: Values the ``split`` column may hold.
SPLIT_PARTS = ("train", "val", "calibration", "test")

REQUIRED_COLUMNS = ("slide_id", "label")
OPTIONAL_COLUMNS = ("patient_id", "center", "split", "path")

# Enough to show the pattern of what is wrong without burying the first problem.
_MAX_LISTED = 20


def format_problems(header: str, problems: Sequence[str], fix: str) -> str:
    """One error message: ``header``, the first problems as a bullet list, then ``fix``."""
    lines = [f"{header}: {len(problems)} problem(s)"]
    lines += [f"  - {p}" for p in problems[:_MAX_LISTED]]
    if len(problems) > _MAX_LISTED:
        lines.append(f"  ... and {len(problems) - _MAX_LISTED} more")
    lines.append(fix)
    return "\n".join(lines)


@dataclass(frozen=True, kw_only=True)
class CohortRow:
    """One slide of a cohort.

    Attributes:
        slide_id: unique name of the slide.
        label: class name.
        patient_id: the patient the slide comes from; slides of one patient never go to
            different parts of a split.
        center: hospital or scanner site, if known.
        split: ``train``, ``val``, ``calibration`` or ``test`` when the table fixes the split,
            else None.
        path: the slide or feature file, absolute, if known.
    """

    slide_id: str
    label: str
    patient_id: str
    center: str | None = None
    split: str | None = None
    path: Path | None = None


@dataclass(frozen=True, kw_only=True)
class Cohort:
    """A validated set of slides with labels, patients and (optionally) centers and splits.

    Construct it with :func:`load_cohort` or :meth:`Cohort.from_rows`; direct construction runs
    the same validation.

    Attributes:
        rows: one per slide, in table order.
        labels: the class names, sorted; a label's index in this tuple is its class index.
        source: the table the cohort was read from, if any (used in error messages).

    Raises:
        CohortError: from construction, when the rows fail the checks of :func:`load_cohort`
            (duplicate slides, unknown labels, fewer than 2 classes, a patient in two splits...).
    """

    rows: tuple[CohortRow, ...]
    labels: tuple[str, ...]
    source: Path | None = None

    def __post_init__(self) -> None:
        problems: list[str] = []
        if list(self.labels) != sorted(set(self.labels)):
            problems.append(f"labels {list(self.labels)} must be sorted and unique")
        names = [f"rows[{i}]" for i in range(len(self.rows))]
        problems += _row_problems(self.rows, names, self.labels)
        if problems:
            where = str(self.source) if self.source is not None else "Cohort"
            raise CohortError(
                format_problems(where, problems, "Fix these rows and build the cohort again."),
                problems,
            )

    @classmethod
    def from_rows(cls, rows: Sequence[CohortRow], *, labels: Sequence[str] | None = None) -> Cohort:
        """Build a cohort from rows; ``labels`` defaults to the labels that occur in them.

        Raises:
            CohortError: when the rows fail validation (see :class:`Cohort`).
        """
        names = labels if labels is not None else [r.label for r in rows]
        return cls(rows=tuple(rows), labels=tuple(sorted(set(names))))

    def label_index(self, row: CohortRow) -> int:
        """The class index of ``row``: the position of its label in :attr:`labels`."""
        return self.labels.index(row.label)

    def by_patient(self) -> dict[str, tuple[CohortRow, ...]]:
        """Rows grouped by patient id, patients in order of first appearance."""
        groups: dict[str, list[CohortRow]] = defaultdict(list)
        for row in self.rows:
            groups[row.patient_id].append(row)
        return {patient: tuple(rows) for patient, rows in groups.items()}

    def centers(self) -> tuple[str, ...]:
        """The distinct centers named in the rows, sorted (rows without a center are skipped)."""
        return tuple(sorted({r.center for r in self.rows if r.center is not None}))

    def slide_ids(self) -> tuple[str, ...]:
        """All slide ids, in row order."""
        return tuple(r.slide_id for r in self.rows)

    def row(self, slide_id: str) -> CohortRow:
        """The row of ``slide_id``.

        Raises:
            KeyError: when no slide has that id.
        """
        for row in self.rows:
            if row.slide_id == slide_id:
                return row
        raise KeyError(slide_id)

    def fingerprint(self) -> str:
        """SHA-256 of the (slide_id, patient_id, label) content, independent of row order.

        Saved splits store it so that they refuse to be reused once the cohort they were drawn
        from has changed.
        """
        content = sorted((r.slide_id, r.patient_id, r.label) for r in self.rows)
        return hashlib.sha256(json.dumps(content).encode()).hexdigest()


def load_cohort(
    table: Path,
    *,
    features_dir: Path | None = None,
    labels: Sequence[str] | None = None,
    require_files: bool = True,
) -> Cohort:
    """Read and validate a cohort table (see the module docstring for its columns).

    Rows are numbered as in a spreadsheet: the header is row 1, the first slide row 2.

    Args:
        table: CSV (``.csv``; ``.tsv`` is tab-separated) or Parquet (``.parquet``/``.pq``).
        features_dir: when given, each row's path is ``features_dir/<slide_id>.h5`` (the
            ``path`` column, if any, is then ignored).
        labels: the allowed class names; a row with another label is a problem. Default: the
            labels found in the table. :attr:`Cohort.labels` is their sorted set.
        require_files: every row with a path must point at an existing file. With neither a
            ``path`` column nor ``features_dir`` there are no files to check.

    Returns:
        The cohort, rows in table order.

    Warns:
        UserWarning: when the table has no ``patient_id`` column, so each slide counts as its own
            patient (splits are then by slide, which leaks if a patient has several slides).

    Raises:
        CohortError: when the table cannot be read, or listing every problem found: missing
            required columns, empty slide_id/label/patient_id, duplicate slide ids, labels
            outside ``labels``, fewer than 2 classes, a patient with slides in different
            splits, a split value other than train/val/calibration/test, missing files.
    """
    header, records = _read_table(table)
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise CohortError(
            f"{table}: missing required column(s) {missing}; the table has columns {header}. "
            "Rename or add the columns (a cohort table needs slide_id and label)."
        )
    duplicated = sorted(c for c, n in Counter(header).items() if n > 1)
    if duplicated:
        raise CohortError(f"{table}: column(s) {duplicated} appear more than once; keep one each.")
    if "patient_id" not in header:
        warnings.warn(
            f"{table}: no patient_id column, so each slide is treated as its own patient; "
            "add patient_id if a patient has several slides, or splits will leak",
            UserWarning,
            stacklevel=2,
        )

    problems: list[str] = []
    rows: list[CohortRow] = []
    names: list[str] = []
    for number, record in records:
        name = f"row {number}"
        if len(record) != len(header):
            problems.append(f"{name}: {len(record)} fields but the header has {len(header)}")
        cell = dict(zip(header, record, strict=False))
        slide_id = cell.get("slide_id", "")
        raw_patient = cell.get("patient_id", slide_id) if "patient_id" in header else slide_id
        raw_path = cell.get("path", "")
        path: Path | None = None
        bad_id = slide_id_problem(slide_id) if slide_id else None
        if bad_id is not None:
            problems.append(f"{name}: {bad_id}")
        elif features_dir is not None and slide_id:
            path = feature_file(features_dir, slide_id)
        elif raw_path:
            path = Path(raw_path) if Path(raw_path).is_absolute() else table.parent / raw_path
        if require_files:
            if path is not None and not path.is_file():
                problems.append(f"{name} (slide {slide_id!r}): file {path} does not exist")
            elif path is None and "path" in header and features_dir is None:
                problems.append(f"{name} (slide {slide_id!r}): empty path")
        rows.append(
            CohortRow(
                slide_id=slide_id,
                label=cell.get("label", ""),
                patient_id=raw_patient,
                center=cell.get("center") or None,
                split=cell.get("split") or None,
                path=path,
            )
        )
        names.append(name)

    allowed = tuple(sorted(set(labels))) if labels is not None else None
    cohort_labels = allowed if allowed is not None else tuple(sorted({r.label for r in rows}))
    problems += _row_problems(rows, names, allowed)
    if problems:
        raise CohortError(
            format_problems(str(table), problems, "Fix the table and load it again."), problems
        )
    return Cohort(rows=tuple(rows), labels=cohort_labels, source=table)


def _row_problems(
    rows: Sequence[CohortRow], names: Sequence[str], allowed: Sequence[str] | None
) -> list[str]:
    """Every problem with ``rows`` (``names[i]`` says where row i is; None: any label is fine)."""
    problems: list[str] = []
    first_row: dict[str, str] = {}
    patient_split: dict[str, tuple[str | None, str]] = {}
    for name, row in zip(names, rows, strict=True):
        where = f"{name} (slide {row.slide_id!r})"
        if not row.slide_id:
            problems.append(f"{name}: empty slide_id")
        elif row.slide_id in first_row:
            problems.append(f"{where}: duplicate slide_id, first seen in {first_row[row.slide_id]}")
        else:
            first_row[row.slide_id] = name
        if not row.label:
            problems.append(f"{where}: empty label")
        elif row.label.lower() in MISSING_MARKERS:
            problems.append(f"{where}: label {row.label!r} marks a missing value, not a class")
        elif allowed is not None and row.label not in allowed:
            problems.append(f"{where}: label {row.label!r} is not one of {list(allowed)}")
        if not row.patient_id:
            problems.append(f"{where}: empty patient_id")
        if row.split is not None and row.split not in SPLIT_PARTS:
            problems.append(f"{where}: split {row.split!r} is not one of {list(SPLIT_PARTS)}")
        if row.patient_id:
            seen = patient_split.setdefault(row.patient_id, (row.split, name))
            if seen[0] != row.split:
                problems.append(
                    f"{where}: patient {row.patient_id!r} is in split {row.split!r} here but in "
                    f"{seen[0]!r} in {seen[1]}; a patient's slides must share one split (leak)"
                )
    present = sorted({r.label for r in rows if r.label})
    if len(present) < 2:
        problems.append(f"fewer than 2 classes: found {present}; a classifier needs at least 2")
    return problems


def _read_table(table: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header (stripped) and (row number, stripped cells) for every non-blank data row."""
    if table.suffix.lower() in (".parquet", ".pq") and table.is_file():
        return _read_parquet(table)
    return read_delimited(table, error=CohortError, rows_are="slide")


def _read_parquet(table: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    try:
        # Optional dependency, imported only for Parquet tables; it ships no type stubs.
        import pyarrow.parquet as pq  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError as exc:
        raise CohortError(
            f"{table}: reading Parquet needs the optional package pyarrow, which is not "
            "installed; install pyarrow or save the table as CSV."
        ) from exc
    try:
        columns = pq.read_table(table).to_pydict()
    except Exception as exc:  # pyarrow raises several unrelated types for broken files
        raise CohortError(f"{table}: cannot be read as Parquet ({exc}).") from exc
    header = [str(name).strip() for name in columns]
    values = [["" if v is None else str(v).strip() for v in col] for col in columns.values()]
    n_rows = len(values[0]) if values else 0
    return header, [(i + 2, [col[i] for col in values]) for i in range(n_rows)]
