"""Train / validation / test splits that cannot leak a patient (or a held-out center).

Every constructor here calls :func:`check_no_leak` before returning, so a split in which one
patient's slides reach two parts cannot be produced. Splits are drawn once, saved with a
fingerprint of the cohort (:func:`save_splits`) and reused (:func:`get_or_create_splits`); they
are never silently redrawn for a cohort that changed.

Stratification (:func:`kfold_splits`, and the train/val division everywhere) is a greedy
assignment of whole patients to parts. Each part has a target count of slides per class (k-fold:
the class total / k; train/val: the class total times 1 - val_fraction or val_fraction).
Patients are shuffled with the seed, then stably ordered by slide count, largest first; each goes
to the part where it most reduces the squared distance of the parts' class counts from their
targets, each class weighted by 1 / its total so rare classes count as much as common ones; the
number of patients is balanced the same way, as one more class. Ties
go to the part least filled relative to its target, then the lowest index. Once the patients
left are no more than the parts still empty, they go to the empty parts, so no part that should
hold slides ends up empty.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from histoguard.core._atomic import write_bytes_atomic
from histoguard.errors import CohortError
from histoguard.mil._cohort import SPLIT_PARTS, Cohort, format_problems

_FORMAT = "histoguard.splits"
_FORMAT_VERSION = 1


@dataclass(frozen=True, kw_only=True)
class Split:
    """One division of a cohort's slides into train, validation and test parts.

    Attributes:
        name: identifies the split within its design (``fold0``, ``loco-RUMC``, ``given``).
        train: slide ids to fit on.
        val: slide ids for early stopping / model selection (may be empty).
        test: slide ids to evaluate on.
        held_out_centers: centers whose slides are all in ``test`` and nowhere else.
        calibration: slide ids held out from every split's training, for calibration,
            conformal prediction and the out-of-distribution gate (the same in every split of
            a design; see :func:`hold_out_calibration`). May be empty.
    """

    name: str
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]
    held_out_centers: tuple[str, ...] = ()
    calibration: tuple[str, ...] = ()

    def parts(self) -> dict[str, tuple[str, ...]]:
        """The four parts by name: ``train``, ``val``, ``calibration``, ``test``."""
        return {
            "train": self.train,
            "val": self.val,
            "calibration": self.calibration,
            "test": self.test,
        }


def check_no_leak(cohort: Cohort, split: Split) -> None:
    """Make sure ``split`` keeps every patient, and every held-out center, in one part.

    Raises:
        CohortError: listing every problem: a slide id not in the cohort, a slide in two parts
            (or twice in one), a patient with slides in two parts, a train/val slide from a
            held-out center.
    """
    rows = {row.slide_id: row for row in cohort.rows}
    problems: list[str] = []
    part_of: dict[str, str] = {}
    patient_parts: dict[str, dict[str, str]] = defaultdict(dict)
    for part, slide_ids in split.parts().items():
        for slide_id in slide_ids:
            row = rows.get(slide_id)
            if row is None:
                problems.append(f"slide {slide_id!r} in {part} is not in the cohort")
                continue
            if slide_id in part_of:
                problems.append(f"slide {slide_id!r} is in {part_of[slide_id]} and in {part}")
                continue
            part_of[slide_id] = part
            patient_parts[row.patient_id].setdefault(part, slide_id)
            # Calibration slides train no model, and a split's own readings leave out those of
            # its held-out centers (see TrustFitter), so they may come from any center.
            if part in ("train", "val") and row.center in split.held_out_centers:
                problems.append(
                    f"slide {slide_id!r} in {part} comes from held-out center {row.center!r}"
                )
    for patient, parts in patient_parts.items():
        if len(parts) > 1:
            where = ", ".join(f"{part} (slide {sid!r})" for part, sid in parts.items())
            problems.append(f"patient {patient!r} has slides in {where}")
    if problems:
        raise CohortError(
            format_problems(
                f"split {split.name!r} leaks",
                problems,
                "Draw the split by patient with histoguard's split functions, or fix the "
                "patient_id / split columns of the cohort table.",
            ),
            problems,
        )


def kfold_splits(
    cohort: Cohort, *, k: int = 5, val_fraction: float = 0.2, seed: int = 0
) -> list[Split]:
    """Patient-grouped, class-stratified k-fold cross-validation.

    Patients are dealt to ``k`` test folds by the greedy stratification of the module
    docstring; in fold ``i`` the patients outside test fold ``i`` are divided again, by patient
    and stratified, into train and val (about ``val_fraction`` of their slides). Every slide is
    in exactly one test fold. The same cohort and seed always give the same splits.

    Args:
        cohort: the slides to split.
        k: number of folds, at least 2.
        val_fraction: share of each fold's non-test slides for validation, in [0, 1).
        seed: orders patients before the greedy assignment.

    Returns:
        ``k`` splits named ``fold0`` ... ``fold{k-1}``.

    Raises:
        CohortError: ``k`` < 2, fewer patients than folds, too few patients to fill train and
            val, or ``val_fraction`` outside [0, 1).
    """
    _check_fraction(val_fraction)
    patients = cohort.by_patient()
    if k < 2:
        raise CohortError(f"k-fold needs k >= 2, got k={k}.")
    if len(patients) < k:
        raise CohortError(
            f"{_where(cohort)}: {len(patients)} patient(s) cannot fill {k} folds by patient; "
            "use a smaller k or add patients."
        )
    rng = random.Random(seed)
    folds = _stratified_assign(cohort, sorted(patients), [1.0] * k, rng)
    splits = []
    for i in range(k):
        test = [p for p in sorted(patients) if folds[p] == i]
        rest = [p for p in sorted(patients) if folds[p] != i]
        train, val = _train_val(cohort, rest, val_fraction, rng, f"outside test fold {i}")
        splits.append(_make(cohort, f"fold{i}", train, val, test))
    return splits


def leave_one_center_out(
    cohort: Cohort, *, val_fraction: float = 0.2, seed: int = 0
) -> list[Split]:
    """One split per center: test is that center's slides, train/val the others' by patient.

    Args:
        cohort: the slides to split; every row needs a center.
        val_fraction: share of the other centers' slides for validation, in [0, 1).
        seed: orders patients before the greedy train/val assignment.

    Returns:
        One split per center, in sorted center order, named ``loco-<center>``, with
        ``held_out_centers == (center,)``.

    Raises:
        CohortError: a row without a center, fewer than 2 centers, a patient in more than one
            center (leaving a center out would then leak that patient), or too few patients in
            the other centers to fill train and val.
    """
    _check_fraction(val_fraction)
    center_of = _patient_centers(cohort, "leave-one-center-out")
    centers = cohort.centers()
    if len(centers) < 2:
        raise CohortError(
            f"{_where(cohort)}: leave-one-center-out needs at least 2 centers, found "
            f"{list(centers)}; use k-fold splits instead."
        )
    rng = random.Random(seed)
    splits = []
    for center in centers:
        test = sorted(p for p, c in center_of.items() if c == center)
        rest = sorted(p for p, c in center_of.items() if c != center)
        train, val = _train_val(cohort, rest, val_fraction, rng, f"centers other than {center!r}")
        splits.append(_make(cohort, f"loco-{center}", train, val, test, (center,)))
    return splits


def unseen_center_splits(
    cohort: Cohort,
    *,
    test_centers: Sequence[str],
    train_centers: Sequence[str] | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> list[Split]:
    """Train on some centers, test on others never seen in training.

    Args:
        cohort: the slides to split; every row needs a center.
        test_centers: centers whose slides form the test part.
        train_centers: centers to train and validate on; default all others. Slides of centers
            in neither list are left out.
        val_fraction: share of the training centers' slides for validation, in [0, 1).
        seed: orders patients before the greedy train/val assignment.

    Returns:
        One split named ``unseen-<c1>+<c2>...`` with ``held_out_centers`` the test centers.

    Raises:
        CohortError: unknown or empty ``test_centers``/``train_centers``, the two overlapping,
            a row without a center, a patient in more than one center, or too few patients.
    """
    _check_fraction(val_fraction)
    center_of = _patient_centers(cohort, "unseen-center splits")
    known = set(cohort.centers())
    held_out = sorted(set(test_centers))
    training = sorted(set(train_centers) if train_centers is not None else known - set(held_out))
    unknown = sorted((set(held_out) | set(training)) - known)
    if unknown or not held_out or not training or set(held_out) & set(training):
        raise CohortError(
            f"{_where(cohort)}: cannot train on centers {training} and test on {held_out}: "
            f"both must be non-empty, disjoint and among the cohort's centers {sorted(known)}"
            + (f" (unknown: {unknown})" if unknown else "")
            + "."
        )
    test = sorted(p for p, c in center_of.items() if c in held_out)
    rest = sorted(p for p, c in center_of.items() if c in training)
    train, val = _train_val(cohort, rest, val_fraction, random.Random(seed), f"centers {training}")
    return [_make(cohort, "unseen-" + "+".join(held_out), train, val, test, tuple(held_out))]


def given_split(cohort: Cohort) -> list[Split]:
    """The split written in the cohort's ``split`` column, exactly as written.

    Returns:
        One split named ``given`` (val may be empty).

    Raises:
        CohortError: a row without a split value (all such slides listed), an empty train or
            test part, or a patient in two parts.
    """
    missing = [row.slide_id for row in cohort.rows if row.split is None]
    if missing:
        problems = [f"slide {s!r} has no split" for s in missing]
        raise CohortError(
            format_problems(
                f"{_where(cohort)}: the given split needs a split value on every row",
                problems,
                "Fill the split column with train, val, calibration or test, or use k-fold splits.",
            ),
            problems,
        )
    parts: dict[str, list[str]] = {part: [] for part in SPLIT_PARTS}
    for row in cohort.rows:
        parts[str(row.split)].append(row.slide_id)
    empty = [part for part in ("train", "test") if not parts[part]]
    if empty:
        raise CohortError(
            f"{_where(cohort)}: the split column puts no slide in {' or '.join(empty)}; "
            "a given split needs both train and test slides."
        )
    split = Split(
        name="given",
        train=tuple(sorted(parts["train"])),
        val=tuple(sorted(parts["val"])),
        test=tuple(sorted(parts["test"])),
        calibration=tuple(sorted(parts["calibration"])),
    )
    check_no_leak(cohort, split)
    return [split]


def hold_out_calibration(
    cohort: Cohort,
    make: Callable[[Cohort], list[Split]],
    *,
    fraction: float = 0.2,
    seed: int = 0,
) -> list[Split]:
    """Hold out calibration patients from every split, then split the rest with ``make``.

    About ``fraction`` of the slides (whole patients, stratified by class with the greedy
    assignment of the module docstring) become every split's ``calibration`` part; ``make``
    splits the other slides into train / val / test as usual. No model of the design trains,
    stops early or is tested on a calibration slide, so calibration, conformal thresholds and
    the out-of-distribution gate fitted there hold for the whole ensemble of folds.

    Args:
        cohort: every slide.
        make: draws the splits of a (sub-)cohort, e.g. ``lambda c: kfold_splits(c, k=5)``.
        fraction: share of slides held out, in [0, 1); 0 returns ``make(cohort)`` unchanged.
        seed: orders patients before the assignment.

    Raises:
        CohortError: fewer than 2 patients, ``fraction`` outside [0, 1), or from ``make``.
    """
    if not 0 <= fraction < 1:
        raise CohortError(f"calibration fraction must be in [0, 1), got {fraction}.")
    if fraction == 0:
        return make(cohort)
    patients = sorted(cohort.by_patient())
    if len(patients) < 2:
        raise CohortError(
            f"{_where(cohort)}: {len(patients)} patient(s) cannot give both calibration and "
            "training slides; add patients or set calibration_fraction=0."
        )
    parts = _stratified_assign(cohort, patients, [1 - fraction, fraction], random.Random(seed))
    held = {p for p in patients if parts[p] == 1}
    rest = Cohort(
        rows=tuple(r for r in cohort.rows if r.patient_id not in held),
        labels=cohort.labels,
        source=cohort.source,
    )
    calibration = tuple(sorted(r.slide_id for r in cohort.rows if r.patient_id in held))
    splits = [dataclasses.replace(s, calibration=calibration) for s in make(rest)]
    for split in splits:
        check_no_leak(cohort, split)
    return splits


def save_splits(splits: Sequence[Split], path: Path, *, cohort: Cohort) -> None:
    """Write ``splits`` as JSON (atomically) with the fingerprint of the cohort they came from.

    Raises:
        CohortError: a split leaks or names slides not in ``cohort``.
        OSError: the file cannot be written.
    """
    for split in splits:
        check_no_leak(cohort, split)
    document = {
        "format": _FORMAT,
        "version": _FORMAT_VERSION,
        "cohort_fingerprint": cohort.fingerprint(),
        "n_slides": len(cohort.rows),
        "splits": [
            {
                "name": s.name,
                "train": list(s.train),
                "val": list(s.val),
                "test": list(s.test),
                "held_out_centers": list(s.held_out_centers),
                "calibration": list(s.calibration),
            }
            for s in splits
        ],
    }
    write_bytes_atomic(path, (json.dumps(document, indent=1) + "\n").encode())


def read_splits_file(path: Path) -> tuple[list[Split], dict[str, Any]]:
    """The splits saved in ``path`` as they are, and the parsed JSON document, with no check
    against a cohort and no leak check: for readers that only need to know which slides each
    split's model saw (the audit) or that check the splits themselves (the report).

    Raises:
        CohortError: the file is missing, unreadable or not a splits file.
    """
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise CohortError(f"{path}: splits file not found.") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CohortError(
            f"{path}: cannot be read as a splits file ({exc}); delete it to draw splits again."
        ) from exc
    return _parse_document(path, document), document


def load_splits(path: Path, cohort: Cohort) -> list[Split]:
    """Read splits saved by :func:`save_splits`, refusing them if ``cohort`` has changed since.

    Raises:
        CohortError: the file is missing, unreadable or not a splits file; the cohort's
            slide_id/patient_id/label content differs from when the splits were saved; or a
            loaded split leaks.
    """
    splits, document = read_splits_file(path)
    if document["cohort_fingerprint"] != cohort.fingerprint():
        listed = {sid for s in splits for part in s.parts().values() for sid in part}
        current = set(cohort.slide_ids())
        raise CohortError(
            f"{path}: the cohort changed since these splits were saved (then "
            f"{document.get('n_slides')} slides, now {len(current)}; "
            f"{len(listed - current)} split slide(s) no longer in the cohort, "
            f"{len(current - listed)} cohort slide(s) in no split, or patients/labels changed). "
            "Restore the cohort table, or delete this file to draw new splits deliberately "
            "(results from the old splits are then not comparable)."
        )
    for split in splits:
        check_no_leak(cohort, split)
    return splits


def get_or_create_splits(
    path: Path, cohort: Cohort, make: Callable[[], list[Split]]
) -> list[Split]:
    """Splits saved at ``path`` if it exists, else ``make()``'s, saved there first.

    Raises:
        CohortError: from :func:`load_splits` (the cohort changed), or from ``make``.
    """
    if path.exists():
        return load_splits(path, cohort)
    splits = make()
    save_splits(splits, path, cohort=cohort)
    return splits


def _parse_document(path: Path, document: Any) -> list[Split]:
    # Hand-edited or foreign JSON must fail here with a clear message, not deep in training.
    def bad(why: str) -> CohortError:
        return CohortError(f"{path}: not a histoguard splits file ({why}); delete it and rerun.")

    if not isinstance(document, dict) or document.get("format") != _FORMAT:
        raise bad(f"no 'format': {_FORMAT!r}")
    if document.get("version") != _FORMAT_VERSION:
        raise bad(f"version {document.get('version')!r}, expected {_FORMAT_VERSION}")
    if not isinstance(document.get("cohort_fingerprint"), str):
        raise bad("no cohort_fingerprint")
    entries = document.get("splits")
    if not isinstance(entries, list):
        raise bad("no list of splits")
    splits = []
    for entry in entries:
        fields = ("train", "val", "test", "held_out_centers")
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("name"), str)
            or not all(
                isinstance(entry.get(f), list) and all(isinstance(x, str) for x in entry[f])
                for f in fields
            )
            # Splits saved before calibration parts existed have no "calibration" key.
            or not isinstance(entry.get("calibration", []), list)
            or not all(isinstance(x, str) for x in entry.get("calibration", []))
        ):
            raise bad(f"malformed split entry {entry!r:.80}")
        splits.append(
            Split(
                name=entry["name"],
                train=tuple(entry["train"]),
                val=tuple(entry["val"]),
                test=tuple(entry["test"]),
                held_out_centers=tuple(entry["held_out_centers"]),
                calibration=tuple(entry.get("calibration", [])),
            )
        )
    return splits


def _make(
    cohort: Cohort,
    name: str,
    train: Sequence[str],
    val: Sequence[str],
    test: Sequence[str],
    held_out_centers: tuple[str, ...] = (),
) -> Split:
    """A split from patient lists, checked for leaks."""
    patients = cohort.by_patient()

    def slides(group: Sequence[str]) -> tuple[str, ...]:
        return tuple(sorted(row.slide_id for p in group for row in patients[p]))

    split = Split(
        name=name,
        train=slides(train),
        val=slides(val),
        test=slides(test),
        held_out_centers=held_out_centers,
    )
    check_no_leak(cohort, split)
    return split


def _train_val(
    cohort: Cohort, patients: Sequence[str], val_fraction: float, rng: random.Random, what: str
) -> tuple[list[str], list[str]]:
    """Divide ``patients`` into train and val by the greedy stratification."""
    needed = 2 if val_fraction > 0 else 1
    if len(patients) < needed:
        raise CohortError(
            f"{_where(cohort)}: {what} has {len(patients)} patient(s), too few for "
            f"{'train and val' if needed == 2 else 'train'}; add patients, lower k, or set "
            "val_fraction=0."
        )
    if val_fraction == 0:
        return list(patients), []
    parts = _stratified_assign(cohort, patients, [1 - val_fraction, val_fraction], rng)
    train = [p for p in patients if parts[p] == 0]
    val = [p for p in patients if parts[p] == 1]
    return train, val


def _stratified_assign(
    cohort: Cohort, patients: Sequence[str], shares: Sequence[float], rng: random.Random
) -> dict[str, int]:
    """Part index for each patient, by the greedy algorithm in the module docstring.

    ``shares`` are the parts' relative sizes; every part with a positive share gets at least
    one patient (the caller makes sure there are enough patients).
    """
    groups = cohort.by_patient()
    n_classes = len(cohort.labels) + 1
    # Column -1 counts the patient itself: balancing it like a class keeps one large patient
    # from filling a part alone, which would leave too few patients to divide elsewhere.
    counts = {p: [0] * (n_classes - 1) + [1] for p in patients}
    for p in patients:
        for row in groups[p]:
            counts[p][cohort.label_index(row)] += 1
    totals = [sum(counts[p][c] for p in patients) for c in range(n_classes)]
    weight = [1.0 / t if t else 0.0 for t in totals]
    scale = sum(shares)
    targets = [[share / scale * t for t in totals] for share in shares]
    size_target = [share / scale * sum(totals[:-1]) for share in shares]
    filled = [[0] * n_classes for _ in shares]
    sizes = [0] * len(shares)

    order = list(patients)
    rng.shuffle(order)
    order.sort(key=lambda p: -sum(counts[p][:-1]))  # stable: the shuffle breaks ties
    assigned: dict[str, int] = {}
    for position, patient in enumerate(order):
        empty = [b for b, share in enumerate(shares) if share > 0 and sizes[b] == 0]
        remaining = len(order) - position
        candidates = empty if 0 < remaining <= len(empty) else range(len(shares))

        def cost(b: int, patient: str = patient) -> tuple[float, float, int]:
            change = sum(
                weight[c]
                * (
                    (filled[b][c] + counts[patient][c] - targets[b][c]) ** 2
                    - (filled[b][c] - targets[b][c]) ** 2
                )
                for c in range(n_classes)
            )
            fill = sizes[b] / size_target[b] if size_target[b] else float("inf")
            return (round(change, 12), fill, b)

        best = min(candidates, key=cost)
        assigned[patient] = best
        sizes[best] += sum(counts[patient][:-1])
        for c in range(n_classes):
            filled[best][c] += counts[patient][c]
    return assigned


def _patient_centers(cohort: Cohort, design: str) -> dict[str, str]:
    """Each patient's single center; center-based designs need exactly one per patient."""
    no_center = [row.slide_id for row in cohort.rows if row.center is None]
    if no_center:
        problems = [f"slide {s!r} has no center" for s in no_center]
        raise CohortError(
            format_problems(
                f"{_where(cohort)}: {design} needs a center on every row",
                problems,
                "Fill the center column, or use k-fold splits.",
            ),
            problems,
        )
    problems = []
    center_of: dict[str, str] = {}
    for patient, rows in cohort.by_patient().items():
        centers = sorted({str(row.center) for row in rows})
        if len(centers) > 1:
            problems.append(f"patient {patient!r} has slides from centers {centers}")
        center_of[patient] = centers[0]
    if problems:
        raise CohortError(
            format_problems(
                f"{_where(cohort)}: {design} would leak patients across centers",
                problems,
                "A patient seen in two centers would be in training and in the held-out "
                "center; fix the patient_id/center columns or use k-fold splits.",
            ),
            problems,
        )
    return center_of


def _check_fraction(val_fraction: float) -> None:
    if not 0 <= val_fraction < 1:
        raise CohortError(f"val_fraction must be in [0, 1), got {val_fraction}.")


def _where(cohort: Cohort) -> str:
    return str(cohort.source) if cohort.source is not None else "cohort"
