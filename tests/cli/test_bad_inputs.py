"""Bad inputs to predict, compare, audit and the shared --out end in a message naming the fix
and a non-zero exit, never a traceback; in a predict batch a bad slide fails alone."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from histoguard.cli import app
from histoguard.features import write_feature_file

DIM, N_TILES = 4, 6
PROVENANCE = {"encoder": "hg-handcrafted", "weights_sha256": "", "tile_size": 224,
              "patch_size_level0": 224}  # fmt: skip


def _run(args: list[str]) -> tuple[int, str]:
    # Wide enough that click's boxed usage errors keep each message on one line.
    result = CliRunner().invoke(app, args, env={"COLUMNS": "1000"})
    # The runner keeps an escaped exception out of the output: one would be a traceback.
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    return result.exit_code, result.output + (result.stderr if result.stderr_bytes else "")


def _coords(n: int = N_TILES) -> np.ndarray:
    index = np.arange(n)
    return np.stack([index % 3, index // 3], axis=1).astype(np.int64) * 224


def _feature_file(path: Path, features: np.ndarray) -> Path:
    write_feature_file(path, features.astype(np.float32), _coords(len(features)), PROVENANCE)
    return path


def _cohort(folder: Path, n: int = 12, centers: int = 2) -> tuple[Path, Path]:
    """``n`` slides of DIM-d features, classes a/b (b shifted by +1), ``centers`` centers."""
    rng = np.random.default_rng(0)
    features = folder / "features"
    features.mkdir(parents=True)
    lines = ["slide_id,label,patient_id,center"]
    for i in range(n):
        _feature_file(features / f"s{i}.h5", rng.normal(size=(N_TILES, DIM)) + i % 2)
        lines.append(f"s{i},{'ab'[i % 2]},p{i},c{i % centers}")
    table = folder / "cohort.csv"
    table.write_text("\n".join(lines) + "\n")
    return table, features


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ABMIL model trained by ``histoguard train`` on generated DIM-d features."""
    folder = tmp_path_factory.mktemp("trained")
    table, features = _cohort(folder)
    out = folder / "model"
    code, output = _run(["train", "--cohort", str(table), "--features", str(features),
                         "--out", str(out), "--epochs", "2", "--k", "2", "--n-boot", "10",
                         "--calibration-fraction", "0", "-q"])  # fmt: skip
    assert code == 0, output
    return out


def test_predict_fails_each_bad_bag_alone_and_says_why(trained: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    good = rng.normal(size=(N_TILES, DIM))
    one_nan, one_inf = good.copy(), good.copy()
    one_nan[2, 1], one_inf[4, 0] = np.nan, -np.inf
    files = {
        "good": good,
        "wide": rng.normal(size=(N_TILES, DIM + 2)),
        "empty": np.zeros((0, DIM)),
        "all_nan": np.full((N_TILES, DIM), np.nan),
        "one_nan": one_nan,
        "one_inf": one_inf,
    }
    paths = [str(_feature_file(tmp_path / f"{name}.h5", x)) for name, x in files.items()]
    out = tmp_path / "out"
    code, output = _run(["predict", *paths, "--model", str(trained), "--out", str(out),
                         "--no-heatmaps"])  # fmt: skip
    assert code == 1, output
    assert "Traceback" not in output
    assert "5 of 6 slides failed" in output
    assert f"{DIM + 2}-dimensional features" in output and f"trained on {DIM}-dimensional" in output
    assert "'hg-handcrafted'" in output  # the fix names the encoder to extract with
    assert "empty bag" in output
    assert f"{N_TILES} of {N_TILES} tiles have NaN or infinite features" in output
    for name in ("one_nan", "one_inf"):
        assert f"{name}.h5: 1 of {N_TILES} tiles have NaN or infinite features" in output
    assert "re-extract" in output
    document = json.loads((out / "predictions.json").read_text())
    assert [s["slide"] for s in document["slides"]] == ["good"]
    assert {e["slide"] for e in document["failed"]} == set(files) - {"good"}
    (slide,) = document["slides"]
    assert all(np.isfinite(p) for p in slide["probabilities"].values())
    rows = (out / "predictions.csv").read_text().splitlines()[1:]
    assert {r.split(",")[0]: r.split(",")[1] == "failed" for r in rows} == {
        name: name != "good" for name in files
    }


def test_predict_of_good_bags_still_exits_0(trained: Path, tmp_path: Path) -> None:
    path = _feature_file(tmp_path / "s.h5", np.random.default_rng(2).normal(size=(N_TILES, DIM)))
    code, output = _run(["predict", str(path), "--model", str(trained), "--out",
                         str(tmp_path / "out"), "--no-heatmaps"])  # fmt: skip
    assert code == 0, output


def test_compare_of_two_runs_works(trained: Path) -> None:
    code, output = _run(["compare", str(trained), str(trained)])
    assert code == 0, output
    assert "random split" in output


@pytest.mark.parametrize("problem", ["no_folder", "empty", "not_json", "not_metrics"])
def test_compare_refuses_folders_without_metrics(
    trained: Path, tmp_path: Path, problem: str
) -> None:
    run = tmp_path / "run"
    if problem != "no_folder":
        run.mkdir()
    if problem == "not_json":
        (run / "metrics.json").write_text("{truncated")
    if problem == "not_metrics":
        (run / "metrics.json").write_text('{"labels": ["a", "b"]}')
    for args in ([str(run), str(trained)], [str(trained), str(run)]):
        code, output = _run(["compare", *args])
        assert code == 1, output
        assert "Traceback" not in output
        assert str(run) in output
        assert "histoguard train" in output  # the fix: a train run's output folder
        expected = {"no_folder": "not a folder", "empty": "no metrics.json",
                    "not_json": "cannot be read as JSON",
                    "not_metrics": "lacks overall, centers"}[problem]  # fmt: skip
        assert expected in output


def test_audit_of_one_center_is_refused(tmp_path: Path) -> None:
    table, features = _cohort(tmp_path, n=8, centers=1)
    code, output = _run(["audit", "--features", str(features), "--cohort", str(table),
                         "--out", str(tmp_path / "out")])  # fmt: skip
    assert code == 2, output
    assert "Traceback" not in output
    assert "only center 'c0'" in output and "at least 2 centers" in output
    assert "robustness_index, apd, clustering_score, site_probe" in output
    assert not (tmp_path / "out" / "audit.json").exists()


def _tile_table(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    lines = ["path,label,center,slide_id"]
    for i in range(8):
        pixels = rng.integers(0, 255, size=(32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"t{i}.png")
        lines.append(f"t{i}.png,{'ab'[i % 2]},c0,slide{i // 2 * 2 + i % 2}")
    table = folder / "tiles.csv"
    table.write_text("\n".join(lines) + "\n")
    return table


def test_audit_of_tiles_of_one_center_refuses_only_center_measures(tmp_path: Path) -> None:
    table = _tile_table(tmp_path)
    args = ["audit", "--tiles", str(table), "--encoder", "hg-handcrafted"]
    code, output = _run([*args, "--out", str(tmp_path / "o1"),
                         "--parts", "site_probe,stress"])  # fmt: skip
    assert code == 2, output
    assert "Traceback" not in output
    assert "site_probe measure the center signal" in output
    assert "--parts stress,adversarial" in output and "need no second center" in output
    # Without a center measure the one-center check lets the audit through.
    from histoguard.robustness._audit import refuse_single_center

    refuse_single_center(("c0",), ("stress", "adversarial"), tiles=True)


#: Each command with --out, and the other arguments it needs to get as far as --out.
OUT_COMMANDS = {
    "train": ["train"],
    "predict": ["predict", "f.h5", "--model", "m"],
    "audit": ["audit"],
    "demo": ["demo"],
    "report": ["report", "run"],
}


@pytest.mark.parametrize("kind", ["file", "below_file", "read_only"])
@pytest.mark.parametrize("command", sorted(OUT_COMMANDS))
def test_out_that_cannot_be_a_writable_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str, kind: str
) -> None:
    afile = tmp_path / "f"
    afile.write_text("x")
    out = {"file": afile, "below_file": afile / "sub", "read_only": tmp_path / "ro" / "out"}[kind]
    if kind == "read_only":
        (tmp_path / "ro").mkdir()
        (tmp_path / "ro").chmod(0o555)
        if os.access(tmp_path / "ro", os.W_OK):  # root writes anywhere: judge as a user would
            real_access = os.access
            monkeypatch.setattr(
                "histoguard.cli._bounds.os.access",
                lambda p, mode: False if Path(p) == tmp_path / "ro" else real_access(p, mode),
            )
    code, output = _run([*OUT_COMMANDS[command], "--out", str(out)])
    assert code == 2, output
    assert "Traceback" not in output
    fix = {"file": "is a file, not a folder", "below_file": "lies below the file",
           "read_only": "is not writable"}[kind]  # fmt: skip
    assert fix in output and "choose" in output
    assert not out.exists() or out == afile


def test_train_out_from_the_settings_file_is_checked(tmp_path: Path) -> None:
    table, features = _cohort(tmp_path, n=4)
    afile = tmp_path / "f"
    afile.write_text("x")
    config = tmp_path / "train.yaml"
    config.write_text(f"cohort: {table}\nfeatures: {features}\nout: {afile / 'sub'}\n")
    code, output = _run(["train", str(config)])
    assert code == 2, output
    assert "Traceback" not in output
    assert "lies below the file" in output and "train.yaml" in output


def test_train_refuses_nan_and_other_width_features(tmp_path: Path) -> None:
    table, features = _cohort(tmp_path)
    nan = np.random.default_rng(3).normal(size=(N_TILES, DIM))
    nan[0, 0] = np.nan
    _feature_file(features / "s3.h5", nan)
    _feature_file(features / "s5.h5", np.zeros((N_TILES, DIM + 1)))
    code, output = _run(["train", "--cohort", str(table), "--features", str(features),
                         "--out", str(tmp_path / "model"), "--epochs", "1", "-q"])  # fmt: skip
    assert code == 1, output
    assert "Traceback" not in output
    assert "1 slide(s) have NaN or infinite features: s3" in output
    assert f"another width than the {DIM} of the others (another encoder): s5" in output
    assert "re-extract them" in output
    assert not (tmp_path / "model" / "fold_0").exists()
