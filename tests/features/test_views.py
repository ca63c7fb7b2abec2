"""Augmented views at extraction: stored as /views (K, N, D) or averaged into the features,
covered by the checksum, identical on reruns, re-extracted when the augmentation changes."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from histoguard.errors import ConfigError, OutputError
from histoguard.features import ExtractionConfig, extract_features, read_feature_file
from histoguard.stain._optical_density import od_to_rgb

AUGMENT = ("hed_jitter:3", "macenko_jitter", "rot90")
N_TILES = 5


@pytest.fixture(scope="module")
def tile_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five 64 px H&E-like tiles (haematoxylin blobs on eosin) as one slide."""
    folder = tmp_path_factory.mktemp("tiles") / "patient1"
    folder.mkdir()
    rng = np.random.default_rng(0)
    h, e = np.array([0.65, 0.70, 0.29]), np.array([0.07, 0.99, 0.11])
    for i in range(N_TILES):
        nuclei = np.clip(rng.normal(size=(64, 64)), 0, None)
        eosin = 0.4 + 0.2 * rng.random((64, 64))
        image = od_to_rgb(nuclei[..., None] * h + eosin[..., None] * e)
        Image.fromarray(image).save(folder / f"t{i}.png")
    return folder


def _config(**kwargs: object) -> ExtractionConfig:
    options: dict[str, object] = {"encoder": "hg-cnn", "readers": 0, "batch_size": 4}
    options.update(kwargs)
    return ExtractionConfig(**options)  # type: ignore[arg-type]


def _extract(folder: Path, out: Path, config: ExtractionConfig) -> str:
    report = extract_features([folder], out, config, progress=False)
    return report.results[0].status


def test_store_keeps_the_features_and_adds_the_views(tile_folder: Path, tmp_path: Path) -> None:
    assert _extract(tile_folder, tmp_path / "plain", _config()) == "done"
    config = _config(augment=AUGMENT, views=3, seed=5)
    assert _extract(tile_folder, tmp_path / "store", config) == "done"
    plain = read_feature_file(tmp_path / "plain" / "patient1.h5")
    stored = read_feature_file(tmp_path / "store" / "patient1.h5", views=True)
    assert plain.views is None and "n_views" not in plain.attrs
    assert stored.views is not None and stored.views.shape == (3, N_TILES, 256)
    assert stored.views.dtype == np.float32
    np.testing.assert_array_equal(stored.features, plain.features)  # the un-augmented ones
    for k in range(3):
        assert not np.allclose(stored.views[k], stored.features)
    assert not np.allclose(stored.views[0], stored.views[1])  # each view its own draws
    attrs = stored.attrs
    assert attrs["augment"] == "hed_jitter:3,macenko_jitter:2,rot90:1"
    assert (attrs["augment_views"], attrs["views_mode"], attrs["n_views"]) == (3, "store", 3)
    # Readers that do not ask for the views do not get them.
    assert read_feature_file(tmp_path / "store" / "patient1.h5").views is None


def test_mean_replaces_the_features_by_the_mean_over_views(
    tile_folder: Path, tmp_path: Path
) -> None:
    _extract(tile_folder, tmp_path / "store", _config(augment=AUGMENT, views=2))
    mean_config = _config(augment=AUGMENT, views=2, views_mode="mean")
    _extract(tile_folder, tmp_path / "mean", mean_config)
    stored = read_feature_file(tmp_path / "store" / "patient1.h5", views=True)
    averaged = read_feature_file(tmp_path / "mean" / "patient1.h5", views=True)
    assert stored.views is not None and averaged.views is None
    assert averaged.features.shape == (N_TILES, 256)
    expected = (stored.features + stored.views.sum(axis=0)) / 3
    np.testing.assert_allclose(averaged.features, expected, rtol=1e-5, atol=1e-6)
    with h5py.File(tmp_path / "mean" / "patient1.h5") as h5:
        assert "views" not in h5 and h5.attrs["views_mode"] == "mean"


def test_reruns_and_batch_sizes_give_identical_views(tile_folder: Path, tmp_path: Path) -> None:
    outputs = []
    for name, batch_size in (("a", 4), ("b", 4), ("c", 2)):
        config = _config(augment=AUGMENT, views=2, seed=1, batch_size=batch_size)
        _extract(tile_folder, tmp_path / name, config)
        outputs.append(read_feature_file(tmp_path / name / "patient1.h5", views=True).views)
    np.testing.assert_array_equal(outputs[0], outputs[1])
    # Batches of 2 put tiles at other positions in a batch; the features may differ in the
    # last bits (other BLAS blocking), the augmented pixels must not.
    np.testing.assert_allclose(outputs[0], outputs[2], rtol=1e-5, atol=1e-5)
    other_seed = _config(augment=AUGMENT, views=2, seed=2)
    _extract(tile_folder, tmp_path / "d", other_seed)
    assert not np.allclose(read_feature_file(tmp_path / "d" / "patient1.h5", views=True).views,
                           outputs[0])  # fmt: skip


def test_a_changed_augmentation_re_extracts(tile_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert _extract(tile_folder, out, _config(augment=("hed_jitter",), views=1)) == "done"
    # The same augmentation, spelled with its default severity, is the same result.
    assert _extract(tile_folder, out, _config(augment=("hed_jitter:2",), views=1)) == "skipped"
    assert _extract(tile_folder, out, _config(augment=("hed_jitter:3",), views=1)) == "done"
    assert _extract(tile_folder, out, _config(augment=("hed_jitter:3",), views=2)) == "done"
    assert _extract(tile_folder, out, _config()) == "done"  # no views: a plain file again
    assert read_feature_file(out / "patient1.h5", views=True).views is None


def test_the_checksum_covers_the_views(tile_folder: Path, tmp_path: Path) -> None:
    _extract(tile_folder, tmp_path, _config(augment=AUGMENT, views=2))
    path = tmp_path / "patient1.h5"
    with h5py.File(path, "r+") as h5:
        h5["views"][0, 0, 0] += 1.0
    read_feature_file(path)  # the view data is not read unless asked for
    with pytest.raises(OutputError, match="views checksum"):
        read_feature_file(path, views=True)
    with h5py.File(path, "r+") as h5:
        h5.attrs["views_sha256"] = "0" * 64  # "fixing" the views' own checksum
    with pytest.raises(OutputError, match="content checksum"):
        read_feature_file(path)
    # A damaged file is not a finished one: the rerun extracts again.
    assert _extract(tile_folder, tmp_path, _config(augment=AUGMENT, views=2)) == "done"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"views": 2}, "needs augment"),
        ({"augment": ("blur",)}, "views is 0"),
        ({"augment": ("blur:9",), "views": 1}, r"outside 1\.\.5"),
        ({"augment": ("blurr",), "views": 1}, "Did you mean 'blur'"),
        ({"augment": ("blur:x",), "views": 1}, "integer"),
        ({"augment": ("blur",), "views": 1, "views_mode": "max"}, "views_mode"),
        ({"augment": ("blur",), "views": -1}, "views >= 0"),
    ],
)
def test_bad_view_settings_are_config_errors(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _config(**options)


def test_result_key_without_views_is_unchanged() -> None:
    key = _config().result_key("")
    for field in ("augment", "views", "seed"):
        assert f'"{field}"' not in key
    assert '"augment"' in _config(augment=("blur",), views=1).result_key("")


def test_the_command_line_extracts_views(tile_folder: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from histoguard.cli import app

    args = ["extract", str(tile_folder), "--encoder", "hg-cnn", "--out", str(tmp_path),
            "--readers", "0", "--augment", "hed_jitter:2", "--augment", "rot90", "--views", "2",
            "--views-mode", "store", "--seed", "3", "--quiet"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    stored = read_feature_file(tmp_path / "patient1.h5", views=True)
    assert stored.views is not None and stored.views.shape == (2, N_TILES, 256)
    assert stored.attrs["augment"] == "hed_jitter:2,rot90:1" and stored.attrs["augment_seed"] == 3
    bad = CliRunner().invoke(app, [*args[:8], "--augment", "blur:7", "--views", "1"])
    assert bad.exit_code == 2 and "outside 1..5" in bad.output and "Traceback" not in bad.output
