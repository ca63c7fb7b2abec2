"""Dataset loaders: every layout on generated miniatures, their errors, and the real tables."""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from histoguard.errors import AuditDataError
from histoguard.features import read_feature_file, write_feature_file
from histoguard.robustness.data._layouts import (
    load_camelyon17_wilds,
    load_class_folders,
    load_feature_cohort,
    load_medmnist,
)
from histoguard.robustness.data._tile_tables import (
    load_tile_table,
    ood_centers_from_table,
)

# --- helpers -----------------------------------------------------------------------------------


def write_image(path: Path, value: int, size: int = 8) -> Path:
    """A flat ``size`` x ``size`` RGB image whose red channel is ``value`` (to recognise it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.full((size, size, 3), 100, np.uint8)
    pixels[..., 0] = value
    Image.fromarray(pixels).save(path)
    return path


def write_table(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> Path:
    delimiter = "\t" if path.suffix == ".tsv" else ","
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def red(dataset_tiles: np.ndarray) -> list[int]:
    return [int(v) for v in dataset_tiles[:, 0, 0, 0]]


# --- tile tables -------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".tsv"])
def test_tile_table_resolves_relative_and_absolute_paths(tmp_path: Path, suffix: str) -> None:
    write_image(tmp_path / "tiles" / "a.png", 10)
    absolute = write_image(tmp_path / "elsewhere" / "b.jpg", 20)
    table = write_table(
        tmp_path / f"tiles{suffix}",
        ["path", "label", "center", "slide_id"],
        [["tiles/a.png", "tumor", "A", "s1"], [str(absolute), "normal", "B", "s2"]],
    )
    data = load_tile_table(table)
    assert data.paths.tolist() == [str(tmp_path / "tiles" / "a.png"), str(absolute)]
    assert data.label.tolist() == ["tumor", "normal"]
    assert data.center.tolist() == ["A", "B"]
    assert data.slide_id.tolist() == ["s1", "s2"]
    tiles = data.load()
    assert tiles.shape == (2, 8, 8, 3)
    assert abs(red(tiles)[0] - 10) <= 2 and abs(red(tiles)[1] - 20) <= 3  # JPEG is lossy


def test_tile_table_aliases_and_image_root(tmp_path: Path) -> None:
    root = tmp_path / "images"
    write_image(root / "x.png", 30)
    table = write_table(
        tmp_path / "t.csv",
        ["image", "biological_class", "medical_center", "case_id"],
        [["x.png", "tumor", "RUMC", "case7"]],
    )
    data = load_tile_table(table, image_root=root)
    assert (data.label[0], data.center[0], data.slide_id[0]) == ("tumor", "RUMC", "case7")
    assert red(data.load()) == [30]


def test_tile_table_without_slides_warns_and_makes_each_tile_its_own_slide(tmp_path: Path) -> None:
    for name in ("a.png", "b.png"):
        write_image(tmp_path / name, 1)
    table = write_table(
        tmp_path / "t.csv", ["file", "label", "center"], [["a.png", "x", "A"], ["b.png", "y", "A"]]
    )
    with pytest.warns(UserWarning, match="each tile is treated as its own slide"):
        data = load_tile_table(table)
    assert data.slide_id.tolist() == ["a.png", "b.png"]


PATHOROB_HEADER = ["subset", "slide_id", "patch_id", "biological_class", "medical_center"]


def test_pathorob_layout_finds_images_by_patch_id(tmp_path: Path) -> None:
    root = tmp_path / "images"
    # Patch "7" exists for both slides: per-slide folders keep them apart.
    write_image(root / "s1" / "7.png", 1)
    write_image(root / "s2" / "7.png", 2)
    write_image(root / "8.jpeg", 3)  # flat layout, another suffix
    (root / "9.txt").write_text("not an image")
    write_image(root / "9.tif", 4)
    table = write_table(
        tmp_path / "pathorob.csv",
        PATHOROB_HEADER,
        [
            ["ID", "s1", "7", "tumor", "RUMC"],
            ["ID", "s2", "7", "normal", "UMCU"],
            ["OOD", "s3", "8", "tumor", "CWZ"],
            ["OOD", "s3", "9", "normal", "CWZ"],
        ],
    )
    data = load_tile_table(table, image_root=root)
    assert [Path(p).relative_to(root).as_posix() for p in data.paths] == [
        "s1/7.png",
        "s2/7.png",
        "8.jpeg",
        "9.tif",
    ]
    assert data.label.tolist() == ["tumor", "normal", "tumor", "normal"]
    assert data.center.tolist() == ["RUMC", "UMCU", "CWZ", "CWZ"]
    assert red(data.load())[:2] == [1, 2] and red(data.load())[3] == 4
    assert ood_centers_from_table(table) == ("CWZ",)


def test_pathorob_patch_shared_by_two_slides_in_a_flat_folder_is_an_error(tmp_path: Path) -> None:
    write_image(tmp_path / "7.png", 1)
    table = write_table(
        tmp_path / "t.csv",
        PATHOROB_HEADER,
        [["ID", "s1", "7", "tumor", "A"], ["ID", "s2", "7", "normal", "A"]],
    )
    with pytest.raises(AuditDataError, match=r"7.png is listed for slides \['s1', 's2'\]"):
        load_tile_table(table)


def test_missing_images_are_reported_together(tmp_path: Path) -> None:
    write_image(tmp_path / "present.png", 1)
    rows = [[f"gone{i}.png", "a", "A", f"s{i}"] for i in range(12)]
    table = write_table(
        tmp_path / "t.csv",
        ["path", "label", "center", "slide_id"],
        [*rows, ["present.png", "b", "A", "s"]],
    )
    with pytest.raises(AuditDataError) as info:
        load_tile_table(table)
    message = str(info.value)
    assert str(table) in message
    assert "12 of 13 tile image(s) not found: gone0.png, gone1.png" in message
    assert "gone4.png and 7 more" in message and "gone5.png" not in message
    assert "image_root" in message


def test_missing_columns_are_named_with_their_aliases(tmp_path: Path) -> None:
    table = write_table(tmp_path / "t.csv", ["path", "slide_id"], [["a.png", "s1"]])
    with pytest.raises(AuditDataError) as info:
        load_tile_table(table)
    message = str(info.value)
    assert str(table) in message
    assert "label (one of label, biological_class)" in message
    assert "center (one of center, medical_center)" in message
    assert "['path', 'slide_id']" in message


def test_row_problems_are_listed_together(tmp_path: Path) -> None:
    for name in ("a.png", "b.png", "c.png"):
        write_image(tmp_path / name, 1)
    table = write_table(
        tmp_path / "t.csv",
        ["path", "label", "center", "slide_id"],
        [["a.png", "", "A", "s1"], ["b.png", "x", "A", "s2"], ["c.png", "x", "B", "s2"]],
    )
    with pytest.raises(AuditDataError) as info:
        load_tile_table(table)
    message = str(info.value)
    assert "2 problem(s)" in message
    assert "row 2: empty label" in message
    assert "slide 's2' appears under centers ['A', 'B']" in message


def test_ragged_rows_and_absent_tables_are_errors(tmp_path: Path) -> None:
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("path,label,center\na.png,x\n")
    with pytest.raises(AuditDataError, match="row 2: 2 fields but the header has 3"):
        load_tile_table(ragged)
    with pytest.raises(AuditDataError, match="table not found"):
        load_tile_table(tmp_path / "nope.csv")


def test_ood_centers_are_empty_without_a_subset_column(tmp_path: Path) -> None:
    table = write_table(tmp_path / "t.csv", ["path", "label", "center"], [["a.png", "x", "A"]])
    assert ood_centers_from_table(table) == ()


# --- the real PathoROB split tables (metadata only) --------------------------------------------


@pytest.mark.parametrize(
    ("name", "ood"),
    [
        ("camelyon", ("CWZ", "LPON", "RST")),
        (
            "tcga_4x4",
            (
                "Cureline",
                "Greater Poland Cancer Center",
                "International Genomics Consortium",
                "Johns Hopkins",
            ),
        ),
        ("camelyon_reduced", ()),
    ],
)
def test_ood_centers_of_the_real_pathorob_tables(
    shared_data: Path, name: str, ood: tuple[str, ...]
) -> None:
    assert ood_centers_from_table(shared_data / "pathorob_splits" / f"{name}.csv") == ood


def test_real_pathorob_table_without_images_reports_them_all(
    shared_data: Path, tmp_path: Path
) -> None:
    table = shared_data / "pathorob_splits" / "camelyon.csv"
    with pytest.raises(AuditDataError) as info:
        load_tile_table(table, image_root=tmp_path)
    message = str(info.value)
    assert "22402 of 22402 tile image(s) not found: test_035/34317" in message
    assert "and 22397 more" in message
    assert f"looked in {tmp_path}/<slide_id>/ or {tmp_path}" in message
    assert "pass image_root=" in message
    assert len(message.splitlines()) <= 4  # one line for all missing images, not 22402


def test_real_pathorob_rows_load_as_is_once_their_images_exist(
    shared_data: Path, tmp_path: Path
) -> None:
    with (shared_data / "pathorob_splits" / "tolkach_esca.csv").open() as handle:
        rows = list(csv.reader(handle))
    header, body = rows[0], rows[1:][::800]
    table = write_table(tmp_path / "subset.csv", header, body)
    for i, (_, slide, patch, _, _) in enumerate(body):
        write_image(tmp_path / "patches" / slide / f"{patch}.png", i)
    data = load_tile_table(table, image_root=tmp_path / "patches")
    assert len(data) == len(body) > 10
    assert data.slide_id.tolist() == [r[1] for r in body]
    assert data.label.tolist() == [r[3] for r in body]
    assert data.center.tolist() == [r[4] for r in body]
    assert red(data.load()) == list(range(len(body)))


# --- class folders -----------------------------------------------------------------------------


def test_one_level_class_folders(tmp_path: Path) -> None:
    root = tmp_path / "lab1"
    for name, value in (("tumor/s1_a.png", 1), ("tumor/s1_b.png", 2), ("normal/s2_a.jpg", 3)):
        write_image(root / name, value)
    (root / "labels.csv").write_text("ignored")
    with pytest.warns(UserWarning, match="own slide"):
        default = load_class_folders(root)
    assert default.label.tolist() == ["normal", "tumor", "tumor"]
    assert default.center.tolist() == ["lab1"] * 3
    assert default.slide_id.tolist() == ["normal/s2_a", "tumor/s1_a", "tumor/s1_b"]

    grouped = load_class_folders(root, center="RUMC", slide_pattern=r"^(s\d+)_")
    assert grouped.center.tolist() == ["RUMC"] * 3
    assert grouped.slide_id.tolist() == ["s2", "s1", "s1"]


def test_two_level_center_class_folders(tmp_path: Path) -> None:
    for name in ("A/tumor/s1_0.png", "A/normal/s2_0.png", "B/tumor/s3_0.png", "B/tumor/s3_1.png"):
        write_image(tmp_path / name, 1)
    data = load_class_folders(tmp_path, slide_pattern=r"(s\d+)")
    assert data.center.tolist() == ["A", "A", "B", "B"]
    assert data.label.tolist() == ["normal", "tumor", "tumor", "tumor"]
    assert data.slide_id.tolist() == ["s2", "s1", "s3", "s3"]
    with pytest.raises(AuditDataError, match="drop center="):
        load_class_folders(tmp_path, center="X", slide_pattern=r"(s\d+)")


def test_class_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(AuditDataError, match="no tile images"):
        load_class_folders(tmp_path)
    with pytest.raises(AuditDataError, match="not a folder"):
        load_class_folders(tmp_path / "nope")
    write_image(tmp_path / "tumor" / "s1.png", 1)
    write_image(tmp_path / "tumor" / "x.png", 1)
    with pytest.raises(AuditDataError, match=r"does not match 1 file name\(s\): x.png"):
        load_class_folders(tmp_path, slide_pattern=r"(s\d)")
    with pytest.raises(AuditDataError, match="has no group"):
        load_class_folders(tmp_path, slide_pattern=r"s\d")
    with pytest.raises(AuditDataError, match="not a valid regex"):
        load_class_folders(tmp_path, slide_pattern=r"(s\d")
    write_image(tmp_path / "B" / "tumor" / "s9.png", 1)
    with pytest.raises(AuditDataError, match="keep one layout"):
        load_class_folders(tmp_path)


def test_two_level_slide_under_two_centers_is_an_error(tmp_path: Path) -> None:
    write_image(tmp_path / "A" / "tumor" / "s1_0.png", 1)
    write_image(tmp_path / "B" / "tumor" / "s1_1.png", 1)
    with pytest.raises(AuditDataError, match=r"slide 's1' appears under centers \['A', 'B'\]"):
        load_class_folders(tmp_path, slide_pattern=r"(s\d)_")


def test_tile_table_decodes_and_resizes_like_every_other_loader(tmp_path: Path) -> None:
    from histoguard.encoders import ResizePolicy

    rgba = np.zeros((4, 8, 4), np.uint8)
    rgba[..., :3] = 30
    rgba[:, :4, 3] = 255  # left half opaque dark grey, right half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    table = write_table(tmp_path / "t.csv", ["path", "label", "center"], [["alpha.png", "a", "A"]])
    with pytest.warns(UserWarning, match="own slide"):
        data = load_tile_table(table)
    native = data.load()
    # Transparent pixels are white (slide background), as in tile folders, not the hidden RGB.
    assert native[0, 0, 0].tolist() == [30, 30, 30] and native[0, 0, -1].tolist() == [255] * 3
    # A non-square tile is centre-cropped by default, never stretched silently ...
    cropped = data.load(size=4)
    np.testing.assert_array_equal(cropped[0], native[0, :, 2:6])
    # ... stretched only when asked, and refused with the file named when the policy says so.
    stretched = data.load(size=4, resize=ResizePolicy(aspect="stretch"))
    assert stretched.shape == (1, 4, 4, 3) and not np.array_equal(stretched, cropped)
    with pytest.raises(AuditDataError, match=r"alpha.png: tiles are 8x4 px, not square"):
        data.load(size=4, resize=ResizePolicy(aspect="refuse"))


def test_real_lc25000_class_folders(shared_data: Path) -> None:
    root = shared_data / "tiles" / "lc25000_lung"
    with pytest.warns(UserWarning, match="own slide"):
        data = load_class_folders(root)
    assert data.classes == ("lung_aca", "lung_n", "lung_scc")
    assert data.centers == ("lc25000_lung",)
    for name in data.classes:
        on_disk = [p for p in (root / name).iterdir() if p.suffix == ".jpeg"]
        assert int((data.label == name).sum()) == len(on_disk) > 900
    assert len(set(data.slide_id.tolist())) == len(data)
    assert data.load(np.arange(2)).shape == (2, 224, 224, 3)


# --- Camelyon17-WILDS --------------------------------------------------------------------------

WILDS_HEADER = ["", "patient", "node", "x_coord", "y_coord", "tumor", "slide", "center", "split"]


def fake_wilds(root: Path, rows: Sequence[Sequence[object]], *, skip: int | None = None) -> Path:
    """metadata.csv plus one 8x8 PNG per row (except row ``skip``), red value = row index."""
    write_table(root / "metadata.csv", WILDS_HEADER, [[i, *row] for i, row in enumerate(rows)])
    for i, (patient, node, x, y, *_) in enumerate(rows):
        if i == skip:
            continue
        folder = f"patient_{int(patient):03d}_node_{node}"
        write_image(root / "patches" / folder / f"patch_{folder}_x_{x}_y_{y}.png", i)
    return root


WILDS_ROWS = [
    ["004", 4, 3328, 21792, 1, 0, 0, 0],
    ["004", 4, 3200, 22240, 0, 0, 0, 0],
    ["017", 2, 9152, 10560, 0, 8, 1, 1],
    ["099", 0, 128, 256, 1, 49, 4, 0],
]


def test_camelyon17_wilds_layout(tmp_path: Path) -> None:
    data = load_camelyon17_wilds(fake_wilds(tmp_path, WILDS_ROWS))
    assert data.label.tolist() == ["tumor", "normal", "normal", "tumor"]
    assert data.center.tolist() == ["center0", "center0", "center1", "center4"]
    assert data.slide_id.tolist() == [
        "patient_004_node_4",
        "patient_004_node_4",
        "patient_017_node_2",
        "patient_099_node_0",
    ]
    assert Path(data.paths[2]).name == "patch_patient_017_node_2_x_9152_y_10560.png"
    assert red(data.load()) == [0, 1, 2, 3]


def test_camelyon17_wilds_problems_are_listed_together(tmp_path: Path) -> None:
    rows = [*WILDS_ROWS, ["005", 1, 0, 0, 2, 3, 0, 0]]
    fake_wilds(tmp_path, rows, skip=1)
    with pytest.raises(AuditDataError) as info:
        load_camelyon17_wilds(tmp_path)
    message = str(info.value)
    assert "row 6: not an integer or bad value in tumor (must be 0 or 1)" in message
    assert "1 of 4 tile image(s) not found: patches/patient_004_node_4/" in message
    with pytest.raises(AuditDataError, match="metadata.csv: not found"):
        load_camelyon17_wilds(tmp_path / "elsewhere")


# --- MedMNIST ----------------------------------------------------------------------------------


def test_medmnist_gray_and_rgb(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    rgb = rng.integers(0, 256, (3, 28, 28, 3), dtype=np.uint8)
    path = tmp_path / "pathmnist.npz"
    np.savez(
        path,
        test_images=gray,
        test_labels=np.array([[0], [1], [1], [2], [0]]),
        val_images=rgb,
        val_labels=np.array([2, 0, 1]),
    )
    test = load_medmnist(path, class_names=["adipose", "background", "debris"])
    assert test.images is not None and test.images.shape == (5, 28, 28, 3)
    assert all(np.array_equal(test.images[..., c], gray) for c in range(3))
    assert test.label.tolist() == ["adipose", "background", "background", "debris", "adipose"]
    assert test.slide_id.tolist() == [f"test/{i}" for i in range(5)]
    assert test.centers == ("medmnist",)

    val = load_medmnist(path, split="val", center="kather")
    assert val.images is not None and np.array_equal(val.images, rgb)
    assert np.array_equal(val.load(), rgb)
    assert val.label.tolist() == ["2", "0", "1"]
    assert val.centers == ("kather",)


def test_medmnist_errors(tmp_path: Path) -> None:
    path = tmp_path / "m.npz"
    images = np.zeros((2, 4, 4), np.uint8)
    np.savez(
        path,
        train_images=images,
        train_labels=np.array([0, 1]),
        val_images=images,
        val_labels=np.array([0, 1]),
    )
    with pytest.raises(AuditDataError, match=re.escape("holds splits ['train', 'val']")):
        load_medmnist(path)
    with pytest.raises(AuditDataError, match="labels go up to 1 but 1 class_names"):
        load_medmnist(path, split="train", class_names=["a"])
    np.savez(path, test_images=images, test_labels=np.array([[0, 1], [1, 0]]))
    with pytest.raises(AuditDataError, match="multi-label"):
        load_medmnist(path)
    np.savez(path, test_images=images.astype(np.float32), test_labels=np.array([0, 1]))
    with pytest.raises(AuditDataError, match="uint8"):
        load_medmnist(path)
    with pytest.raises(AuditDataError, match="not found"):
        load_medmnist(tmp_path / "none.npz")


# --- feature files -----------------------------------------------------------------------------

FEATURE_DIM = 6


def write_cohort(tmp_path: Path, sizes: dict[str, int], rows: Sequence[Sequence[str]]) -> Path:
    """Feature files with ``sizes[slide]`` tiles each (row k of slide j holds j*1000 + k) and a
    cohort table."""
    features_dir = tmp_path / "features"
    for j, (slide, n) in enumerate(sizes.items()):
        values = (j * 1000 + np.arange(n, dtype=np.float32))[:, None]
        write_feature_file(
            features_dir / f"{slide}.h5",
            np.repeat(values, FEATURE_DIM, axis=1),
            np.stack([np.arange(n), np.zeros(n)], axis=1).astype(np.int64),
            {"encoder": "test"},
        )
    return write_table(tmp_path / "cohort.csv", ["slide_id", "label", "center", "patient_id"], rows)


COHORT_ROWS = [["s1", "tumor", "A", "p1"], ["s2", "normal", "A", "p2"], ["s3", "tumor", "B", "p3"]]


def test_feature_cohort_labels_and_subsamples_each_slide(tmp_path: Path) -> None:
    table = write_cohort(tmp_path, {"s1": 5, "s2": 300, "s3": 10}, COHORT_ROWS)
    data = load_feature_cohort(tmp_path / "features", table, max_tiles_per_slide=8, seed=1)
    assert len(data) == 5 + 8 + 8 and data.dim == FEATURE_DIM
    assert data.slide_id.tolist() == ["s1"] * 5 + ["s2"] * 8 + ["s3"] * 8
    assert data.label.tolist() == ["tumor"] * 5 + ["normal"] * 8 + ["tumor"] * 8
    assert data.center.tolist() == ["A"] * 13 + ["B"] * 8
    # Each embedding is the file row its item id names.
    for item, row in zip(data.item_id, data.embeddings, strict=True):
        slide, index = item.split(":")
        stored = read_feature_file(tmp_path / "features" / f"{slide}.h5").features
        assert np.array_equal(stored[int(index)], row)
    s2_rows = [int(i.split(":")[1]) for i in data.item_id if i.startswith("s2:")]
    assert s2_rows == sorted(s2_rows) and len(set(s2_rows)) == 8

    again = load_feature_cohort(tmp_path / "features", table, max_tiles_per_slide=8, seed=1)
    other = load_feature_cohort(tmp_path / "features", table, max_tiles_per_slide=8, seed=2)
    assert again.item_id.tolist() == data.item_id.tolist()
    assert other.item_id.tolist() != data.item_id.tolist()
    everything = load_feature_cohort(tmp_path / "features", table, max_tiles_per_slide=None)
    assert len(everything) == 315


def test_feature_cohort_lists_all_missing_files(tmp_path: Path) -> None:
    rows = [*COHORT_ROWS, ["s4", "normal", "B", "p4"]]
    table = write_cohort(tmp_path, {"s1": 3, "s2": 3}, rows)
    with pytest.raises(AuditDataError) as info:
        load_feature_cohort(tmp_path / "features", table)
    message = str(info.value)
    assert "2 problem(s)" in message
    assert "s3.h5 does not exist" in message and "s4.h5 does not exist" in message


def test_feature_cohort_needs_a_center_for_every_slide(tmp_path: Path) -> None:
    rows = [["s1", "tumor", "A", "p1"], ["s2", "normal", "", "p2"]]
    table = write_cohort(tmp_path, {"s1": 3, "s2": 3}, rows)
    with pytest.raises(
        AuditDataError, match="(?s)slide 's2': no center.*give every slide a center"
    ):
        load_feature_cohort(tmp_path / "features", table)


def test_feature_cohort_rejects_mixed_embedding_lengths(tmp_path: Path) -> None:
    table = write_cohort(tmp_path, {"s1": 3, "s2": 3, "s3": 3}, COHORT_ROWS)
    write_feature_file(
        tmp_path / "features" / "s3.h5",
        np.zeros((3, 4), np.float32),
        np.zeros((3, 2), np.int64),
        {},
    )
    with pytest.raises(AuditDataError, match="slide 's3': 4-d embeddings, most slides have 6-d"):
        load_feature_cohort(tmp_path / "features", table)
    with pytest.raises(AuditDataError, match="max_tiles_per_slide"):
        load_feature_cohort(tmp_path / "features", table, max_tiles_per_slide=0)


def test_pathorob_ids_cannot_reach_outside_the_image_root(tmp_path: Path) -> None:
    root = tmp_path / "images"
    write_image(root / "s1" / "7.png", 1)
    write_image(tmp_path / "secret" / "7.png", 2)  # what "../secret" would reach
    table = write_table(
        tmp_path / "pathorob.csv",
        PATHOROB_HEADER,
        [["ID", "s1", "7", "tumor", "RUMC"], ["ID", "../secret", "7", "normal", "UMCU"]],
    )
    with pytest.raises(AuditDataError, match=r"row 3 \(slide_id\).*not a plain file name"):
        load_tile_table(table, image_root=root)
