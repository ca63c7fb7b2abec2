"""Per-slide feature files: histoguard's verified layout and other tools' files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from histoguard import OutputError
from histoguard.features._feature_file import (
    FeatureFile,
    feature_file_done,
    read_feature_file,
    write_feature_file,
)

ATTRS = {"encoder": "resnet50", "level": 1, "read_size": 224, "mpp": 0.5, "note": None}


def _write(path: Path, n: int = 6, d: int = 4, **kwargs: Any) -> FeatureFile:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(n, d)).astype(np.float32)
    coords = np.arange(2 * n, dtype=np.int64).reshape(n, 2) * 224
    return write_feature_file(path, features, coords, ATTRS, **kwargs)


def test_round_trip_keeps_arrays_and_attributes(tmp_path: Path) -> None:
    path = tmp_path / "slide.h5"
    written = _write(path)
    read = read_feature_file(path)
    assert read.source_format == "histoguard"
    assert read.features.dtype == np.float32 and read.features.shape == (6, 4)
    assert read.coords is not None and read.coords.dtype == np.int64
    np.testing.assert_array_equal(read.features, written.features)
    np.testing.assert_array_equal(read.coords, written.coords)
    assert read.tile_names is None
    assert read.attrs["encoder"] == "resnet50" and read.attrs["mpp"] == 0.5
    assert (read.attrs["n_tiles"], read.attrs["embed_dim"]) == (6, 4)
    assert "note" not in read.attrs  # None is left out, never faked
    assert [p.name for p in tmp_path.iterdir()] == ["slide.h5"]  # no temporaries left


def test_attributes_are_also_on_coords_for_clam_readers(tmp_path: Path) -> None:
    _write(tmp_path / "slide.h5")
    with h5py.File(tmp_path / "slide.h5", "r") as h5:
        on_coords = dict(h5["coords"].attrs)
        assert on_coords["content_sha256"] == h5.attrs["content_sha256"]
    assert (on_coords["patch_level"], on_coords["patch_size"]) == (1, 224)


def test_tile_names_round_trip_as_utf8(tmp_path: Path) -> None:
    names = ["a.png", "b.png", "c.png", "d.png", "e.png", "tuile-é.png"]
    read = _write(tmp_path / "folder.h5", tile_names=names)
    assert read.tile_names == tuple(names)


def test_empty_slide_round_trips(tmp_path: Path) -> None:
    read = _write(tmp_path / "empty.h5", n=0, d=8)
    assert read.features.shape == (0, 8)
    assert read.coords is not None and read.coords.shape == (0, 2)


@pytest.mark.parametrize(
    ("features", "coords"),
    [
        (np.zeros(5), np.zeros((5, 2), np.int64)),
        (np.zeros((5, 3)), np.zeros((4, 2), np.int64)),
        (np.zeros((5, 3)), np.zeros((5, 2), np.float64)),
    ],
)
def test_writer_rejects_bad_shapes(
    tmp_path: Path, features: np.ndarray, coords: np.ndarray
) -> None:
    with pytest.raises(ValueError):
        write_feature_file(tmp_path / "bad.h5", features, coords, {})
    assert not (tmp_path / "bad.h5").exists()


def test_changed_feature_value_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "slide.h5"
    _write(path)
    with h5py.File(path, "r+") as h5:
        h5["features"][2, 1] += 1e-3
    with pytest.raises(OutputError, match=r"slide\.h5.*checksum"):
        read_feature_file(path)


def test_changed_tile_name_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "folder.h5"
    _write(path, tile_names=[f"t{i}.png" for i in range(6)])
    with h5py.File(path, "r+") as h5:
        h5["tile_names"][0] = "other.png"
    with pytest.raises(OutputError, match="checksum"):
        read_feature_file(path)


def test_wrong_tile_count_attribute_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "slide.h5"
    _write(path)
    with h5py.File(path, "r+") as h5:
        h5.attrs["n_tiles"] = 7
    with pytest.raises(OutputError, match="n_tiles"):
        read_feature_file(path)


def test_real_bag_with_features_and_metadata(shared_data: Path) -> None:
    path = shared_data / "feature_bags" / "TCGA-3X-AAVA-01Z-00-DX1" / "features.h5"
    bag = read_feature_file(path)
    assert bag.source_format == "metadata"
    assert bag.features.shape == (180, 512) and bag.features.dtype == np.float32
    assert bag.coords is None
    # Its metadata holds one tile image name per row.
    assert bag.tile_names is not None and len(bag.tile_names) == 180
    assert bag.tile_names[0].endswith(".jpg")


def test_real_bag_with_feats_and_coords(shared_data: Path) -> None:
    path = shared_data / "feature_bags" / "TCGA-AD-6964-01Z-00-DX1" / "features.h5"
    bag = read_feature_file(path)
    assert bag.source_format == "feats"
    assert bag.features.shape == (777, 512) and bag.features.dtype == np.float32
    assert bag.coords is not None and bag.coords.shape == (777, 2)
    assert bag.coords.dtype == np.int64


@pytest.mark.parametrize(
    ("coord_attrs", "expected"),
    [
        ({"patch_level": 0, "patch_size": 256, "downsample": [1.0, 1.0]}, "clam"),
        ({"patch_size": 256, "patch_size_level0": 512, "target_magnification": 20}, "trident"),
    ],
)
def test_clam_and_trident_files_read(
    tmp_path: Path, coord_attrs: dict[str, Any], expected: str
) -> None:
    path = tmp_path / "clam.h5"
    features = np.arange(12, dtype=np.float16).reshape(4, 3)
    with h5py.File(path, "w") as h5:
        h5.create_dataset("features", data=features)
        coords = h5.create_dataset("coords", data=np.array([[0, 0], [256, 0], [0, 256], [9, 9]]))
        for key, value in coord_attrs.items():
            coords.attrs[key] = value
    bag = read_feature_file(path)
    assert bag.source_format == expected
    assert bag.features.dtype == np.float32
    np.testing.assert_array_equal(bag.features, features.astype(np.float32))
    assert bag.coords is not None and bag.coords[1].tolist() == [256, 0]
    assert bag.attrs["patch_size"] == 256


def _h5(path: Path, **datasets: np.ndarray) -> Path:
    with h5py.File(path, "w") as h5:
        for name, data in datasets.items():
            h5.create_dataset(name, data=data)
    return path


@pytest.mark.parametrize(
    ("datasets", "message"),
    [
        ({"features": np.zeros(10, np.float32)}, r"features has shape \(10,\)"),
        (
            {"feats": np.zeros((10, 4), np.float32), "coords": np.zeros((9, 2), np.int64)},
            r"coords has shape \(9, 2\) but feats has \(10, 4\)",
        ),
        ({"embeddings": np.zeros((3, 2), np.float32)}, r"no 'features' or 'feats'.*embeddings"),
        (
            {"features": np.zeros((2, 2)), "coords": np.array([[0.5, 0.0], [1.0, 2.0]])},
            "not whole pixel positions",
        ),
    ],
)
def test_malformed_files_name_the_file_and_what_was_found(
    tmp_path: Path, datasets: dict[str, np.ndarray], message: str
) -> None:
    path = _h5(tmp_path / "odd.h5", **datasets)
    with pytest.raises(OutputError, match=rf"odd\.h5: .*{message}"):
        read_feature_file(path)


def test_not_hdf5_is_an_output_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.h5"
    path.write_bytes(b"not an hdf5 file")
    with pytest.raises(OutputError, match="junk.h5"):
        read_feature_file(path)


def test_done_only_for_a_verified_file_with_the_expected_settings(tmp_path: Path) -> None:
    path = tmp_path / "slide.h5"
    assert not feature_file_done(path, expect={})
    _write(path)
    assert feature_file_done(path, expect={"encoder": "resnet50", "level": 1})
    assert feature_file_done(path, expect={"note": None})  # None: must be absent
    assert not feature_file_done(path, expect={"encoder": "uni"})
    assert not feature_file_done(path, expect={"missing": "x"})
    with h5py.File(path, "r+") as h5:
        h5["coords"][0, 0] = 1
    assert not feature_file_done(path, expect={"encoder": "resnet50"})


def test_done_is_false_for_another_tools_file(tmp_path: Path) -> None:
    path = _h5(tmp_path / "clam.h5", features=np.zeros((2, 2), np.float32))
    assert read_feature_file(path).source_format == "features"
    assert not feature_file_done(path, expect={})
