"""Cohort tables: every problem is found before training, all of them in one error."""

from __future__ import annotations

import importlib.util
import pickle
from pathlib import Path

import pytest

from histoguard.errors import HistoguardError
from histoguard.mil._cohort import Cohort, CohortError, CohortRow, load_cohort


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text.strip() + "\n", encoding="utf-8")
    return path


GOOD = """
slide_id,label,patient_id,center,split
s1,tumor,p1,A,train
s2,normal,p1,A,train
s3,tumor,p2,B,test
s4,normal,p3,B,val
"""


def test_loads_a_good_table(tmp_path: Path) -> None:
    cohort = load_cohort(write_csv(tmp_path / "c.csv", GOOD))
    assert cohort.labels == ("normal", "tumor")
    assert [r.slide_id for r in cohort.rows] == ["s1", "s2", "s3", "s4"]
    assert cohort.rows[0] == CohortRow(
        slide_id="s1", label="tumor", patient_id="p1", center="A", split="train", path=None
    )
    assert cohort.label_index(cohort.rows[0]) == 1
    assert list(cohort.by_patient()) == ["p1", "p2", "p3"]
    assert [r.slide_id for r in cohort.by_patient()["p1"]] == ["s1", "s2"]
    assert cohort.centers() == ("A", "B")
    assert cohort.source == tmp_path / "c.csv"


def test_cells_are_stripped_and_empty_optionals_are_none(tmp_path: Path) -> None:
    table = write_csv(tmp_path / "c.csv", "slide_id , label,center\n s1 , a ,\ns2,b, X ")
    with pytest.warns(UserWarning):
        cohort = load_cohort(table)
    assert cohort.rows[0].slide_id == "s1" and cohort.rows[0].label == "a"
    assert cohort.rows[0].center is None and cohort.rows[1].center == "X"


def test_patient_defaults_to_slide_and_says_so(tmp_path: Path) -> None:
    table = write_csv(tmp_path / "c.csv", "slide_id,label\ns1,a\ns2,b")
    with pytest.warns(UserWarning, match="no patient_id column.*own patient"):
        cohort = load_cohort(table)
    assert [r.patient_id for r in cohort.rows] == ["s1", "s2"]


def test_relative_paths_resolve_against_the_table_folder(tmp_path: Path) -> None:
    (tmp_path / "slides").mkdir()
    (tmp_path / "slides" / "s1.svs").write_bytes(b"x")
    absolute = tmp_path / "elsewhere.svs"
    absolute.write_bytes(b"x")
    table = write_csv(
        tmp_path / "c.csv",
        f"slide_id,label,patient_id,path\ns1,a,p1,slides/s1.svs\ns2,b,p2,{absolute}",
    )
    cohort = load_cohort(table)
    assert cohort.rows[0].path == tmp_path / "slides" / "s1.svs"
    assert cohort.rows[1].path == absolute


def test_features_dir_gives_one_h5_per_slide(tmp_path: Path) -> None:
    features = tmp_path / "features"
    features.mkdir()
    for name in ("s1", "s2"):
        (features / f"{name}.h5").write_bytes(b"x")
    table = write_csv(
        tmp_path / "c.csv", "slide_id,label,patient_id,path\ns1,a,p1,nothing.svs\ns2,b,p2,"
    )
    cohort = load_cohort(table, features_dir=features)
    assert [r.path for r in cohort.rows] == [features / "s1.h5", features / "s2.h5"]


def test_missing_feature_file_names_row_and_file(tmp_path: Path) -> None:
    features = tmp_path / "features"
    features.mkdir()
    (features / "s1.h5").write_bytes(b"x")
    table = write_csv(tmp_path / "c.csv", "slide_id,label,patient_id\ns1,a,p1\ns2,b,p2")
    with pytest.raises(CohortError, match=r"row 3 \(slide 's2'\): file .*s2\.h5 does not exist"):
        load_cohort(table, features_dir=features)
    assert len(load_cohort(table, features_dir=features, require_files=False).rows) == 2


def test_missing_path_file_and_empty_path(tmp_path: Path) -> None:
    table = write_csv(
        tmp_path / "c.csv", "slide_id,label,patient_id,path\ns1,a,p1,gone.svs\ns2,b,p2,"
    )
    with pytest.raises(CohortError) as info:
        load_cohort(table)
    assert "row 2 (slide 's1'): file" in str(info.value) and "gone.svs" in str(info.value)
    assert "row 3 (slide 's2'): empty path" in str(info.value)
    assert load_cohort(table, require_files=False).rows[1].path is None


def test_missing_required_columns_lists_what_exists(tmp_path: Path) -> None:
    table = write_csv(tmp_path / "c.csv", "slide,diagnosis\ns1,a")
    with pytest.raises(
        CohortError, match=r"c\.csv.*\['slide_id', 'label'\].*\['slide', 'diagnosis'\]"
    ):
        load_cohort(table)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("s1,a,p1\n,b,p2", "row 3: empty slide_id"),
        ("s1,a,p1\ns2,,p2\ns3,b,p3", "row 3 (slide 's2'): empty label"),
        ("s1,a,p1\ns2,b,", "row 3 (slide 's2'): empty patient_id"),
        ("s1,a,p1\ns1,b,p2", "row 3 (slide 's1'): duplicate slide_id, first seen in row 2"),
        ("s1,a,p1\ns2,a,p2", "fewer than 2 classes: found ['a']"),
        ("s1,a,p1\ns2,b,p2,extra", "row 3: 4 fields but the header has 3"),
    ],
)
def test_each_row_problem_is_named(tmp_path: Path, body: str, expected: str) -> None:
    table = write_csv(tmp_path / "c.csv", "slide_id,label,patient_id\n" + body)
    with pytest.raises(CohortError) as info:
        load_cohort(table)
    assert expected in str(info.value)
    assert str(table) in str(info.value)


def test_label_outside_the_given_labels(tmp_path: Path) -> None:
    table = write_csv(tmp_path / "c.csv", "slide_id,label,patient_id\ns1,a,p1\ns2,b,p2\ns3,c,p3")
    with pytest.raises(CohortError, match=r"row 4 \(slide 's3'\): label 'c' is not one of"):
        load_cohort(table, labels=["b", "a"])
    cohort = load_cohort(table, labels=["c", "b", "a", "d"])
    assert cohort.labels == ("a", "b", "c", "d")


def test_patient_in_two_splits_is_a_leak(tmp_path: Path) -> None:
    table = write_csv(
        tmp_path / "c.csv", "slide_id,label,patient_id,split\ns1,a,p1,train\ns2,b,p1,test"
    )
    with pytest.raises(CohortError, match=r"row 3 \(slide 's2'\): patient 'p1'.*row 2.*leak"):
        load_cohort(table)


def test_split_value_outside_train_val_test(tmp_path: Path) -> None:
    table = write_csv(
        tmp_path / "c.csv", "slide_id,label,patient_id,split\ns1,a,p1,train\ns2,b,p2,holdout"
    )
    with pytest.raises(CohortError, match=r"row 3 \(slide 's2'\): split 'holdout' is not one of"):
        load_cohort(table)


def test_all_problems_are_listed_in_one_error(tmp_path: Path) -> None:
    table = write_csv(
        tmp_path / "c.csv",
        """
slide_id,label,patient_id,split,path
s1,a,p1,train,missing1.svs
s1,a,p2,train,missing2.svs
,a,p3,test,missing3.svs
s4,a,p1,test,missing4.svs
s5,a,p5,later,missing5.svs
""",
    )
    with pytest.raises(CohortError) as info:
        load_cohort(table)
    message = str(info.value)
    for expected in (
        "row 3 (slide 's1'): duplicate slide_id",
        "row 4: empty slide_id",
        "row 5 (slide 's4'): patient 'p1'",
        "row 6 (slide 's5'): split 'later'",
        "fewer than 2 classes",
        "missing5.svs does not exist",
    ):
        assert expected in message
    assert len(info.value.problems) == 10  # 5 missing files + 5 above


def test_long_problem_lists_are_truncated_but_kept(tmp_path: Path) -> None:
    body = "\n".join(f"s{i},{'ab'[i % 2]},p{i},x" for i in range(30))
    table = write_csv(tmp_path / "c.csv", "slide_id,label,patient_id,split\n" + body)
    with pytest.raises(CohortError) as info:
        load_cohort(table)
    assert "30 problem(s)" in str(info.value) and "... and 10 more" in str(info.value)
    assert len(info.value.problems) == 30


def test_unreadable_tables(tmp_path: Path) -> None:
    with pytest.raises(CohortError, match="not found"):
        load_cohort(tmp_path / "absent.csv")
    with pytest.raises(CohortError, match="empty"):
        load_cohort(write_csv(tmp_path / "empty.csv", ""))
    (tmp_path / "latin.csv").write_bytes(b"slide_id,label\n\xe9,a\n")
    with pytest.raises(CohortError, match="UTF-8"):
        load_cohort(tmp_path / "latin.csv")


def test_tsv_and_byte_order_mark(tmp_path: Path) -> None:
    tsv = tmp_path / "c.tsv"
    tsv.write_text("slide_id\tlabel\tpatient_id\ns1\ta\tp1\ns2\tb\tp2\n", encoding="utf-8")
    assert load_cohort(tsv).slide_ids() == ("s1", "s2")
    bom = tmp_path / "bom.csv"
    bom.write_text("slide_id,label,patient_id\ns1,a,p1\ns2,b,p2\n", encoding="utf-8-sig")
    assert load_cohort(bom).slide_ids() == ("s1", "s2")


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is not None, reason="pyarrow installed")
def test_parquet_without_pyarrow_is_a_clear_error(tmp_path: Path) -> None:
    table = tmp_path / "c.parquet"
    table.write_bytes(b"PAR1")
    with pytest.raises(CohortError, match=r"c\.parquet.*pyarrow.*save the table as CSV"):
        load_cohort(table)


def test_parquet_with_pyarrow(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = tmp_path / "c.parquet"
    pq.write_table(
        pa.table({"slide_id": ["s1", "s2"], "label": [0, 1], "patient_id": ["p", "q"]}), table
    )
    cohort = load_cohort(table)
    assert cohort.labels == ("0", "1") and cohort.slide_ids() == ("s1", "s2")


def test_direct_construction_is_validated() -> None:
    rows = [
        CohortRow(slide_id="s1", label="a", patient_id="p1"),
        CohortRow(slide_id="s1", label="b", patient_id="p2"),
    ]
    with pytest.raises(CohortError, match=r"rows\[1\] \(slide 's1'\): duplicate"):
        Cohort.from_rows(rows)
    with pytest.raises(CohortError, match="sorted and unique"):
        Cohort(rows=(rows[0],), labels=("b", "a"))
    good = Cohort.from_rows([rows[0], CohortRow(slide_id="s2", label="b", patient_id="p2")])
    assert good.labels == ("a", "b") and good.row("s2").label == "b"


def test_error_is_a_histoguard_error_and_pickles() -> None:
    error = CohortError("bad table", ["row 2: x"])
    assert isinstance(error, HistoguardError)
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == "bad table" and copy.problems == ("row 2: x",)


def test_fingerprint_ignores_row_order_but_not_content() -> None:
    a = CohortRow(slide_id="s1", label="a", patient_id="p1", center="X")
    b = CohortRow(slide_id="s2", label="b", patient_id="p2")
    first = Cohort.from_rows([a, b]).fingerprint()
    assert Cohort.from_rows([b, a]).fingerprint() == first
    moved = CohortRow(slide_id="s2", label="b", patient_id="p1")
    assert Cohort.from_rows([a, moved]).fingerprint() != first


@pytest.mark.parametrize("bad", ["../x", "a/b", "..", "/abs", "c:x", "a\\b"])
def test_slide_id_that_is_not_a_file_name_never_reads_outside(tmp_path: Path, bad: str) -> None:
    features = tmp_path / "features"
    features.mkdir()
    (tmp_path / "x.h5").write_bytes(b"x")
    (features / "s2.h5").write_bytes(b"x")
    table = write_csv(tmp_path / "c.csv", f'slide_id,label\n"{bad}",a\ns2,b')
    with pytest.raises(CohortError, match=r"row 2: slide_id .* is not a plain file name"):
        load_cohort(table, features_dir=features)


def test_label_nan_is_a_missing_value_not_a_class(tmp_path: Path) -> None:
    table = write_csv(tmp_path / "c.csv", "slide_id,label\ns1,a\ns2,b\ns3,nan")
    with pytest.raises(CohortError, match=r"row 4 \(slide 's3'\): label 'nan' marks a missing"):
        load_cohort(table)
