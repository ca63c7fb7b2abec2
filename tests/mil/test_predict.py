"""Prediction from feature files: it checks the features fit the model, averages the folds'
output, and draws nothing."""

from __future__ import annotations

import ast
import json
import os
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch

import histoguard.mil
from histoguard.errors import ModelMismatchError
from histoguard.features import write_feature_file
from histoguard.mil import build_model, level0_tile_size, load_model, predict, save_model

IN_DIM, N_TILES = 8, 12
PROVENANCE = {"encoder": "uni", "weights_sha256": "ab" * 32, "mpp": 0.5, "tile_size": 224}


def grid_coords(side: int = 256) -> np.ndarray:
    index = np.arange(N_TILES)
    return np.stack([index % 4, index // 4], axis=1).astype(np.int64) * side


def features(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(N_TILES, IN_DIM)).astype(np.float32)


def save_tiny_model(
    folder: Path, provenance: Mapping[str, Any] | None = PROVENANCE, seed: int = 0
) -> Path:
    torch.manual_seed(seed)
    save_model(
        build_model("abmil", in_dim=IN_DIM, n_classes=2),
        folder,
        labels=["normal", "tumour"],
        provenance=provenance,
    )
    return folder


def histoguard_file(path: Path, **attrs: Any) -> Path:
    write_feature_file(path, features(), grid_coords(), {**PROVENANCE, **attrs})
    return path


def clam_file(path: Path, **coords_attrs: Any) -> Path:
    """A CLAM-style file: ``features`` + ``coords``, tiling attributes on ``coords`` only."""
    with h5py.File(path, "w") as h5:
        h5.create_dataset("features", data=features())
        coords = h5.create_dataset("coords", data=grid_coords())
        for key, value in coords_attrs.items():
            coords.attrs[key] = value
    return path


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_saved_model_files_are_readable_by_the_group(tmp_path: Path, umask_022: None) -> None:
    model = save_tiny_model(tmp_path / "model")
    for name in ("model.safetensors", "model.json"):
        assert stat.S_IMODE((model / name).stat().st_mode) == 0o644, name


def test_checkpoint_records_provenance_and_predict_draws_nothing(tmp_path: Path) -> None:
    model = save_tiny_model(tmp_path / "model")
    assert json.loads((model / "model.json").read_text())["provenance"] == PROVENANCE
    file = histoguard_file(tmp_path / "s1.h5", patch_size_level0=512)
    (result,) = predict(model, [file], tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "predictions.csv",
        "predictions.json",
        "tiles.csv",
    ]
    assert result.attention is not None and result.attention.shape == (N_TILES,)
    np.testing.assert_array_equal(result.coords, grid_coords())
    assert result.tile_size0 == 512 and result.feature_file == file
    assert result.warnings == ()
    assert sum(result.probabilities.values()) == pytest.approx(1.0)


def test_tile_scores_join_to_tile_names_in_one_line(tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    model = save_tiny_model(tmp_path / "model")
    names = [f"img_{i:02d}.png" for i in range(N_TILES)]
    index = np.stack([np.arange(N_TILES), np.zeros(N_TILES)], axis=1).astype(np.int64)
    folder_file = tmp_path / "P1.h5"
    write_feature_file(folder_file, features(1), index, PROVENANCE, tile_names=names)
    slide_file = histoguard_file(tmp_path / "s1.h5", patch_size_level0=512)
    results = predict(model, [folder_file, slide_file], tmp_path / "out")
    table = pd.read_csv(tmp_path / "out" / "tiles.csv", keep_default_na=False)
    assert len(table) == 2 * N_TILES
    # A user's own table of tile names joins in one line.
    mine = pd.DataFrame({"tile": names, "pathologist": ["x"] * N_TILES})
    joined = table.merge(mine, on="tile")
    assert len(joined) == N_TILES and set(joined["slide"]) == {"P1"}
    by_name = joined.set_index("tile")
    attention = results[0].attention
    assert attention is not None
    np.testing.assert_allclose(by_name.loc[names, "attention"], attention, rtol=1e-5)
    assert by_name.loc[names[int(np.argmax(attention))], "attention_rank"] == 1
    assert sorted(by_name["attention_rank"]) == list(range(1, N_TILES + 1))
    slide_rows = table[table["slide"] == "s1"]
    np.testing.assert_array_equal(slide_rows[["x", "y"]].to_numpy(), grid_coords())
    assert (slide_rows["tile"] == "").all()
    assert {"tile_p_normal", "tile_p_tumour", "tile_entropy"} <= set(table.columns)


@pytest.mark.parametrize(
    ("field", "value"),
    [("encoder", "phikon-v2"), ("weights_sha256", "cd" * 32), ("mpp", 1.0), ("tile_size", 256)],
)
def test_predict_refuses_features_of_another_encoder_or_scale(
    tmp_path: Path, field: str, value: object
) -> None:
    model = save_tiny_model(tmp_path / "model")
    file = histoguard_file(tmp_path / "s1.h5", **{field: value})
    with pytest.raises(ModelMismatchError) as caught:
        predict(model, [file], tmp_path / "out")
    message = str(caught.value)
    assert str(file) in message and field in message and "--force" in message
    assert repr(value) in message and repr(PROVENANCE[field]) in message
    (forced,) = predict(model, [file], tmp_path / "out", force=True)
    assert any(field in w and "forced" in w for w in forced.warnings)


def test_resolution_within_rounding_is_the_same(tmp_path: Path) -> None:
    model = save_tiny_model(tmp_path / "model")
    (result,) = predict(model, [histoguard_file(tmp_path / "s.h5", mpp=0.502)], tmp_path / "o")
    assert result.warnings == ()


def test_missing_provenance_is_a_warning_not_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = save_tiny_model(tmp_path / "model")
    file = clam_file(tmp_path / "clam.h5", patch_size=256, patch_level=0)
    (result,) = predict(model, [file], tmp_path / "out")
    (warning,) = result.warnings
    assert str(file) in warning and "encoder (not recorded by the feature file)" in warning
    assert warning in caplog.text


def test_checkpoints_without_provenance_still_load_and_predict(tmp_path: Path) -> None:
    model = save_tiny_model(tmp_path / "model")
    description = json.loads((model / "model.json").read_text())
    del description["provenance"]  # as written before provenance was recorded
    (model / "model.json").write_text(json.dumps(description))
    _, labels = load_model(model)
    assert labels == ["normal", "tumour"]
    (result,) = predict(model, [histoguard_file(tmp_path / "s.h5")], tmp_path / "out")
    assert "not recorded by the model" in result.warnings[0]


def test_tile_size_from_trident_and_clam_attributes(tmp_path: Path, known_slide: Path) -> None:
    assert level0_tile_size({"patch_size_level0": 512, "patch_size": 256}) == 512
    assert level0_tile_size({"level0_tile_size": 448}) == 448
    assert level0_tile_size({"patch_size": 256, "patch_level": 0}) == 256
    assert level0_tile_size({"patch_size": 256, "patch_level": 1, "downsample": [4.0, 4.0]}) == 1024
    # A level above 0 without its downsample: only the slide can tell (known: x1, x2, x4).
    assert level0_tile_size({"patch_size": 256, "patch_level": 2}) is None
    assert level0_tile_size({"patch_size": 256, "patch_level": 2}, known_slide) == 1024
    assert level0_tile_size({"patch_size": 256, "patch_level": 2}, tmp_path / "gone.svs") is None
    assert level0_tile_size({}) is None


def test_no_mil_module_imports_drawing_libraries() -> None:
    for module in sorted(Path(histoguard.mil.__file__).parent.glob("*.py")):
        tree = ast.parse(module.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                assert top not in {"PIL", "matplotlib"}, (module.name, name)
                assert not name.startswith("histoguard.report"), (module.name, name)


def test_cli_predict_refuses_other_features_unless_forced(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from histoguard.cli import app

    model = save_tiny_model(tmp_path / "model")
    file = histoguard_file(tmp_path / "s1.h5", encoder="phikon-v2", level0_tile_size=256)
    args = ["predict", str(file), "--model", str(model), "--out", str(tmp_path / "out")]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 1
    assert "phikon-v2" in refused.output and "--force" in refused.output
    forced = CliRunner().invoke(app, [*args, "--force"])
    assert forced.exit_code == 0, forced.output
    assert "forced" in forced.output and (tmp_path / "out" / "predictions.csv").is_file()
    # No slide recorded: the map of tiles is written, no overlay, and the output says why.
    assert (tmp_path / "out" / "s1.attention.geojson").is_file()
    assert "cannot reopen the slide" in forced.output


def test_an_empty_bag_fails_its_slide_and_the_batch_goes_on(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from histoguard.cli import app

    model = save_tiny_model(tmp_path / "model")
    good = histoguard_file(tmp_path / "s1.h5", patch_size_level0=512)
    empty = tmp_path / "empty.h5"
    write_feature_file(empty, np.zeros((0, IN_DIM), np.float32), np.zeros((0, 2), np.int64),
                       PROVENANCE)  # fmt: skip
    broken = tmp_path / "broken.h5"
    broken.write_bytes(b"not hdf5")
    args = ["predict", str(empty), str(good), str(broken), "--model", str(model),
            "--out", str(tmp_path / "out"), "--no-heatmaps"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    assert "error:" in result.output and "empty bag" in result.output
    assert str(broken) in result.output and "2 of 3 slides failed" in result.output
    assert "Traceback" not in result.output
    rows = (tmp_path / "out" / "predictions.csv").read_text().splitlines()
    by_slide = {line.split(",")[0]: line.split(",") for line in rows[1:]}
    assert set(by_slide) == {"s1", "empty", "broken"}
    assert by_slide["s1"][1] != "failed"
    assert by_slide["empty"][1] == "failed" and "empty bag" in by_slide["empty"][2]
    document = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert {e["slide"] for e in document["failed"]} == {"empty", "broken"}
    assert [s["slide"] for s in document["slides"]] == ["s1"]


def test_training_refuses_empty_bags_and_names_them(tmp_path: Path) -> None:
    from histoguard.errors import CohortError
    from histoguard.mil import load_cohort
    from histoguard.mil._bags import load_bags

    features_dir = tmp_path / "features"
    features_dir.mkdir()
    histoguard_file(features_dir / "s1.h5")
    write_feature_file(features_dir / "s2.h5", np.zeros((0, IN_DIM), np.float32),
                       np.zeros((0, 2), np.int64), PROVENANCE)  # fmt: skip
    table = tmp_path / "cohort.csv"
    table.write_text("slide_id,patient_id,label\ns1,p1,normal\ns2,p2,tumour\n")
    cohort = load_cohort(table, require_files=False)
    with pytest.raises(CohortError, match=r"1 slide\(s\) have no tiles \(empty bags\): s2"):
        load_bags(cohort, features_dir)
