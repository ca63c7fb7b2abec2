"""Splits: no patient (or held-out center) in two parts, stratified, reproducible, reused."""

from __future__ import annotations

import csv
import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from histoguard.mil._cohort import Cohort, CohortError, CohortRow, load_cohort
from histoguard.mil._splits import (
    Split,
    check_no_leak,
    get_or_create_splits,
    given_split,
    kfold_splits,
    leave_one_center_out,
    load_splits,
    save_splits,
    unseen_center_splits,
)

MAX_SLIDES_PER_PATIENT = 4


@st.composite
def cohorts(draw: st.DrawFn, min_patients: int = 6, min_centers: int = 1) -> Cohort:
    """Random cohorts: patients with 1-4 slides, 2-3 labels, 1-4 centers (one per patient)."""
    n_labels = draw(st.integers(2, 3))
    n_centers = draw(st.integers(min_centers, 4))
    n_patients = draw(st.integers(max(min_patients, 2 * n_centers + 1), 40))
    rows = []
    for p in range(n_patients):
        center = f"C{p % n_centers}"  # every center gets at least two patients
        n_slides = draw(st.integers(1, MAX_SLIDES_PER_PATIENT))
        for s in range(n_slides):
            # The first two slides cover two classes, so every cohort has at least 2.
            label = f"L{p}" if p < 2 and s == 0 else f"L{draw(st.integers(0, n_labels - 1))}"
            rows.append(
                CohortRow(slide_id=f"p{p}s{s}", label=label[:2], patient_id=f"p{p}", center=center)
            )
    return Cohort.from_rows(rows)


def assert_patient_in_one_part(cohort: Cohort, split: Split) -> None:
    patient_of = {r.slide_id: r.patient_id for r in cohort.rows}
    parts_of: dict[str, set[str]] = defaultdict(set)
    for part, slides in split.parts().items():
        for slide_id in slides:
            parts_of[patient_of[slide_id]].add(part)
    assert all(len(parts) == 1 for parts in parts_of.values()), split.name


def assert_partition(cohort: Cohort, split: Split) -> None:
    listed = [*split.train, *split.val, *split.test]
    assert sorted(listed) == sorted(cohort.slide_ids())


@settings(max_examples=60, deadline=None)
@given(cohort=cohorts(), k=st.integers(2, 5), seed=st.integers(0, 2**16))
def test_kfold_properties(cohort: Cohort, k: int, seed: int) -> None:
    splits = kfold_splits(cohort, k=k, seed=seed)
    assert [s.name for s in splits] == [f"fold{i}" for i in range(k)]
    for split in splits:
        assert_patient_in_one_part(cohort, split)
        assert_partition(cohort, split)
        assert split.train and split.val and split.test
    # Every slide is tested exactly once across the folds.
    tested = Counter(slide for split in splits for slide in split.test)
    assert set(tested) == set(cohort.slide_ids()) and set(tested.values()) == {1}
    # Stratified: a fold's count of each class is within one patient of its fair share.
    label_of = {r.slide_id: r.label for r in cohort.rows}
    totals = Counter(label_of.values())
    for split in splits:
        counts = Counter(label_of[s] for s in split.test)
        for label, total in totals.items():
            assert abs(counts[label] - total / k) <= MAX_SLIDES_PER_PATIENT, (split.name, label)
    # Deterministic for a seed, whatever the order of the table rows.
    assert kfold_splits(cohort, k=k, seed=seed) == splits
    reordered = Cohort.from_rows(cohort.rows[::-1])
    assert kfold_splits(reordered, k=k, seed=seed) == splits


@settings(max_examples=60, deadline=None)
@given(cohort=cohorts(min_centers=2), seed=st.integers(0, 2**16))
def test_leave_one_center_out_properties(cohort: Cohort, seed: int) -> None:
    splits = leave_one_center_out(cohort, seed=seed)
    assert [s.held_out_centers for s in splits] == [(c,) for c in cohort.centers()]
    center_of = {r.slide_id: r.center for r in cohort.rows}
    for split, center in zip(splits, cohort.centers(), strict=True):
        assert split.name == f"loco-{center}"
        assert set(split.test) == {s for s, c in center_of.items() if c == center}
        assert center not in {center_of[s] for s in (*split.train, *split.val)}
        assert_patient_in_one_part(cohort, split)
        assert_partition(cohort, split)
        assert split.train and split.val
    assert leave_one_center_out(cohort, seed=seed) == splits


@settings(max_examples=30, deadline=None)
@given(cohort=cohorts(min_centers=2), val_fraction=st.sampled_from([0.0, 0.1, 0.5]))
def test_unseen_center_split_properties(cohort: Cohort, val_fraction: float) -> None:
    held_out = cohort.centers()[-1]
    (split,) = unseen_center_splits(cohort, test_centers=[held_out], val_fraction=val_fraction)
    center_of = {r.slide_id: r.center for r in cohort.rows}
    assert set(split.test) == {s for s, c in center_of.items() if c == held_out}
    assert split.held_out_centers == (held_out,) and split.name == f"unseen-{held_out}"
    assert bool(split.val) == (val_fraction > 0)
    assert_patient_in_one_part(cohort, split)
    assert_partition(cohort, split)


def make_cohort(spec: Sequence[tuple[str, str, str, str | None]], split: bool = False) -> Cohort:
    """Rows from (slide_id, label, patient_id, center-or-split) tuples."""
    return Cohort.from_rows(
        [
            CohortRow(
                slide_id=s,
                label=label,
                patient_id=p,
                center=None if split else extra,
                split=extra if split else None,
            )
            for s, label, p, extra in spec
        ]
    )


def test_val_fraction_is_roughly_respected() -> None:
    rows = [(f"s{i}", "ab"[i % 2], f"p{i}", "X") for i in range(100)]
    (split,) = kfold_splits(make_cohort(rows), k=2, val_fraction=0.2)[:1]
    assert len(split.test) == 50 and len(split.val) == 10 and len(split.train) == 40


def test_check_no_leak_finds_every_kind_of_leak() -> None:
    cohort = make_cohort(
        [
            ("s1", "a", "p1", "X"),
            ("s2", "b", "p1", "X"),
            ("s3", "a", "p2", "Y"),
            ("s4", "b", "p3", "Y"),
        ]
    )
    leaky = Split(name="bad", train=("s1", "s3", "zz"), val=("s3",), test=("s2", "s4"))
    with pytest.raises(CohortError) as info:
        check_no_leak(cohort, leaky)
    message = str(info.value)
    assert "split 'bad' leaks" in message
    assert "slide 'zz' in train is not in the cohort" in message
    assert "slide 's3' is in train and in val" in message
    assert "patient 'p1' has slides in train (slide 's1'), test (slide 's2')" in message
    center_leak = Split(
        name="c", train=("s1", "s2", "s3"), val=(), test=("s4",), held_out_centers=("Y",)
    )
    with pytest.raises(CohortError, match="slide 's3' in train comes from held-out center 'Y'"):
        check_no_leak(cohort, center_leak)
    check_no_leak(cohort, Split(name="ok", train=("s1", "s2"), val=("s3",), test=("s4",)))


def test_given_split_uses_the_column_exactly() -> None:
    cohort = make_cohort(
        [("s1", "a", "p1", "train"), ("s2", "b", "p1", "train"), ("s3", "a", "p2", "test"),
         ("s4", "b", "p3", "val")],
        split=True,
    )  # fmt: skip
    assert given_split(cohort) == [
        Split(name="given", train=("s1", "s2"), val=("s4",), test=("s3",))
    ]


def test_given_split_errors() -> None:
    partial = make_cohort([("s1", "a", "p1", "train"), ("s2", "b", "p2", None)], split=True)
    with pytest.raises(CohortError, match="slide 's2' has no split"):
        given_split(partial)
    no_test = make_cohort([("s1", "a", "p1", "train"), ("s2", "b", "p2", "val")], split=True)
    with pytest.raises(CohortError, match="no slide in test"):
        given_split(no_test)


def test_center_designs_refuse_patients_in_two_centers() -> None:
    cohort = make_cohort(
        [
            ("s1", "a", "p1", "X"),
            ("s2", "b", "p1", "Y"),
            ("s3", "a", "p2", "Y"),
            ("s4", "b", "p3", "X"),
        ]
    )
    with pytest.raises(
        CohortError, match=r"(?s)would leak.*patient 'p1' has slides from centers \['X', 'Y'\]"
    ):
        leave_one_center_out(cohort)
    with pytest.raises(CohortError, match="patient 'p1'"):
        unseen_center_splits(cohort, test_centers=["Y"])


def test_center_designs_need_centers() -> None:
    one_center = make_cohort([(f"s{i}", "ab"[i % 2], f"p{i}", "X") for i in range(6)])
    with pytest.raises(CohortError, match=r"at least 2 centers, found \['X'\]"):
        leave_one_center_out(one_center)
    no_center = make_cohort([("s1", "a", "p1", "X"), ("s2", "b", "p2", None)])
    with pytest.raises(CohortError, match="slide 's2' has no center"):
        leave_one_center_out(no_center)
    two = make_cohort([(f"s{i}", "ab"[i % 2], f"p{i}", "XY"[i % 2]) for i in range(8)])
    with pytest.raises(CohortError, match=r"unknown: \['Z'\]"):
        unseen_center_splits(two, test_centers=["Z"])
    with pytest.raises(CohortError, match="disjoint"):
        unseen_center_splits(two, test_centers=["X"], train_centers=["X", "Y"])


def test_unseen_center_split_with_explicit_training_centers() -> None:
    three = make_cohort([(f"s{i}", "ab"[i % 2], f"p{i}", "XYZ"[i % 3]) for i in range(18)])
    (split,) = unseen_center_splits(three, test_centers=["Z"], train_centers=["X"])
    center_of = {r.slide_id: r.center for r in three.rows}
    assert {center_of[s] for s in (*split.train, *split.val)} == {"X"}
    assert {center_of[s] for s in split.test} == {"Z"}


def test_kfold_argument_errors() -> None:
    cohort = make_cohort([(f"s{i}", "ab"[i % 2], f"p{i}", "X") for i in range(4)])
    with pytest.raises(CohortError, match="k >= 2"):
        kfold_splits(cohort, k=1)
    with pytest.raises(CohortError, match="4 patient"):
        kfold_splits(cohort, k=5)
    with pytest.raises(CohortError, match="val_fraction"):
        kfold_splits(cohort, val_fraction=1.0)
    two = make_cohort([("s1", "a", "p1", "X"), ("s2", "b", "p2", "X")])
    with pytest.raises(
        CohortError, match="outside test fold 0 has 1 patient.*too few for train and val"
    ):
        kfold_splits(two, k=2)
    assert all(not s.val and s.train for s in kfold_splits(two, k=2, val_fraction=0))


def test_save_load_round_trip(tmp_path: Path) -> None:
    cohort = make_cohort([(f"s{i}", "ab"[i % 2], f"p{i // 2}", "XY"[i % 2]) for i in range(20)])
    splits = kfold_splits(cohort, k=3)
    path = tmp_path / "out" / "splits.json"
    save_splits(splits, path, cohort=cohort)
    assert load_splits(path, cohort) == splits
    assert load_splits(path, Cohort.from_rows(cohort.rows[::-1])) == splits
    document = json.loads(path.read_text())
    assert document["cohort_fingerprint"] == cohort.fingerprint()
    assert not list(path.parent.glob(".*tmp*"))  # written atomically, nothing left behind


def test_load_refuses_after_the_cohort_changed(tmp_path: Path) -> None:
    rows = [(f"s{i}", "ab"[i % 2], f"p{i}", "X") for i in range(10)]
    cohort = make_cohort(rows)
    path = tmp_path / "splits.json"
    save_splits(kfold_splits(cohort, k=2), path, cohort=cohort)
    for changed in (
        make_cohort([*rows, ("s99", "a", "p99", "X")]),  # a slide added
        make_cohort(rows[1:]),  # a slide removed
        make_cohort([("s0", "b", "p0", "X"), *rows[1:]]),  # relabelled
        make_cohort([("s0", "a", "p1", "X"), *rows[1:]]),  # another patient
    ):
        with pytest.raises(CohortError, match=r"splits\.json: the cohort changed"):
            load_splits(path, changed)
        with pytest.raises(CohortError, match="the cohort changed"):
            get_or_create_splits(path, changed, partial(kfold_splits, changed, k=2))


def test_get_or_create_reuses_saved_splits(tmp_path: Path) -> None:
    cohort = make_cohort([(f"s{i}", "ab"[i % 2], f"p{i}", "X") for i in range(12)])
    path = tmp_path / "splits.json"
    calls = []

    def make() -> list[Split]:
        calls.append(1)
        return kfold_splits(cohort, k=3, seed=len(calls))

    first = get_or_create_splits(path, cohort, make)
    second = get_or_create_splits(path, cohort, make)
    assert first == second and len(calls) == 1


def test_save_refuses_a_leaking_split(tmp_path: Path) -> None:
    cohort = make_cohort([("s1", "a", "p1", "X"), ("s2", "b", "p1", "X"), ("s3", "b", "p2", "X")])
    with pytest.raises(CohortError, match="patient 'p1'"):
        save_splits(
            [Split(name="x", train=("s1",), val=(), test=("s2", "s3"))],
            tmp_path / "s.json",
            cohort=cohort,
        )
    assert not (tmp_path / "s.json").exists()


@pytest.mark.parametrize(
    "content",
    ["{not json", "[]", '{"format": "other"}', '{"format": "histoguard.splits", "version": 9}',
     '{"format": "histoguard.splits", "version": 1, "cohort_fingerprint": "x",'
     ' "splits": [{"name": 1}]}'],
)  # fmt: skip
def test_load_refuses_files_that_are_not_splits(tmp_path: Path, content: str) -> None:
    cohort = make_cohort([("s1", "a", "p1", "X"), ("s2", "b", "p2", "X")])
    path = tmp_path / "splits.json"
    path.write_text(content)
    with pytest.raises(CohortError, match=r"splits\.json"):
        load_splits(path, cohort)


def test_load_missing_file(tmp_path: Path) -> None:
    cohort = make_cohort([("s1", "a", "p1", "X"), ("s2", "b", "p2", "X")])
    with pytest.raises(CohortError, match="not found"):
        load_splits(tmp_path / "none.json", cohort)


def test_glas_kfold_never_splits_a_patient(shared_data: Path, tmp_path: Path) -> None:
    root = shared_data / "tiles" / "glas"
    with (root / "labels.csv").open(newline="") as handle:
        source = list(csv.DictReader(handle))
    table = tmp_path / "glas.csv"
    with table.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["slide_id", "label", "patient_id", "center", "path"])
        for row in source:
            image = root / row["path"]
            writer.writerow([image.stem, row["label"], row["patient"], row["center"], image])
    cohort = load_cohort(table)
    assert cohort.labels == ("benign", "malignant") and len(cohort.by_patient()) == 16
    for seed in range(3):
        splits = kfold_splits(cohort, k=5, seed=seed)
        for split in splits:
            assert_patient_in_one_part(cohort, split)
            assert_partition(cohort, split)
        assert sorted(s for split in splits for s in split.test) == sorted(cohort.slide_ids())


def test_camelyon_leave_one_center_out(shared_data: Path, tmp_path: Path) -> None:
    patches: dict[str, list[tuple[str, str]]] = defaultdict(list)
    with (shared_data / "pathorob_splits" / "camelyon.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            patches[row["slide_id"]].append((row["biological_class"], row["medical_center"]))
    table = tmp_path / "camelyon.csv"
    with table.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["slide_id", "label", "center"])
        for slide_id, values in sorted(patches.items()):
            label = Counter(c for c, _ in values).most_common(1)[0][0]
            (center,) = {m for _, m in values}  # a slide comes from one center
            writer.writerow([slide_id, label, center])
    with pytest.warns(UserWarning, match="own patient"):
        cohort = load_cohort(table)
    splits = leave_one_center_out(cohort)
    assert len(cohort.centers()) == 5 and len(splits) == 5
    center_of = {r.slide_id: r.center for r in cohort.rows}
    for split, center in zip(splits, cohort.centers(), strict=True):
        assert set(split.test) == {s for s, c in center_of.items() if c == center}
        assert_patient_in_one_part(cohort, split)
        assert_partition(cohort, split)
        check_no_leak(cohort, split)
