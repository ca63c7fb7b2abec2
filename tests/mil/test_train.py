"""Training on pseudo-slides built from real tiles: every model learns; outputs are reusable."""

from __future__ import annotations

import itertools
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import mannwhitneyu

from histoguard.mil import (
    TrainConfig,
    load_bags,
    load_cohort,
    load_model,
    predict,
    predict_bags,
    train,
    train_split,
)
from histoguard.mil._splits import kfold_splits
from tests.mil.conftest import N_BAGS, TILE_SIZE0, PseudoCohort

MODELS = ["mean-pool", "max-pool", "topk", "abmil", "clam-sb", "clam-mb", "transmil", "dsmil"]
ATTENTION_MODELS = ["topk", "abmil", "clam-sb", "clam-mb", "transmil", "dsmil"]


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve by the Mann-Whitney U statistic."""
    u = mannwhitneyu(scores[positive], scores[~positive]).statistic
    return float(u / (positive.sum() * (~positive).sum()))


def _config(cohort: PseudoCohort, out: Path, **kwargs: object) -> TrainConfig:
    options: dict[str, object] = {"epochs": 30, "patience": 6, "lr": 1e-3, "n_boot": 200, "k": 3}
    options.update(kwargs)
    return TrainConfig(cohort=cohort.table, features=cohort.features, out=out, **options)  # type: ignore[arg-type]


def test_pseudo_cohort_bags_share_no_tile_and_no_source_image(
    pseudo_cohort: PseudoCohort,
) -> None:
    bags = sorted(pseudo_cohort.tile_paths)
    assert len(bags) == N_BAGS
    for a, b in itertools.combinations(bags, 2):
        assert not set(pseudo_cohort.tile_paths[a]) & set(pseudo_cohort.tile_paths[b]), (a, b)
        assert not set(pseudo_cohort.tile_groups[a]) & set(pseudo_cohort.tile_groups[b]), (a, b)
    # Hence every split the training uses is disjoint in tiles and source images.
    cohort = load_cohort(pseudo_cohort.table, features_dir=pseudo_cohort.features)
    for split in kfold_splits(cohort, k=3, seed=0):
        parts = {"train": split.train, "val": split.val, "test": split.test}
        groups = {
            name: {g for s in ids for g in pseudo_cohort.tile_groups[s]}
            for name, ids in parts.items()
        }
        tiles = {
            name: {t for s in ids for t in pseudo_cohort.tile_paths[s]}
            for name, ids in parts.items()
        }
        for x, y in itertools.combinations(parts, 2):
            assert not groups[x] & groups[y], (split.name, x, y)
            assert not tiles[x] & tiles[y], (split.name, x, y)


@pytest.mark.parametrize("model", MODELS)
def test_every_model_learns_from_real_tile_bags(
    pseudo_cohort: PseudoCohort, tmp_path: Path, model: str
) -> None:
    config = _config(pseudo_cohort, tmp_path, model=model)
    cohort = load_cohort(config.cohort, features_dir=config.features)
    bags = load_bags(cohort, config.features)
    split = kfold_splits(cohort, k=3, seed=0)[0]
    trained = train_split(split, cohort, bags, config)
    test = [bags[s] for s in split.test]
    probs, attention = predict_bags(trained, test)
    truth = np.array(
        [
            cohort.labels.index(next(r.label for r in cohort.rows if r.slide_id == s))
            for s in split.test
        ]
    )
    tumour = cohort.labels.index("tumour")
    slide_auc = auc(probs[:, tumour], truth == tumour)
    print(f"{model}: held-out slide AUC {slide_auc:.3f}")
    assert slide_auc > 0.8, f"{model}: held-out slide AUC {slide_auc:.2f}"
    if model in ATTENTION_MODELS:
        scores = np.concatenate(
            [
                a
                for a, s in zip(attention, split.test, strict=True)
                if pseudo_cohort.positive_tiles[s].any()
            ]
        )  # type: ignore[misc]
        truth_tiles = np.concatenate(
            [
                pseudo_cohort.positive_tiles[s]
                for s in split.test
                if pseudo_cohort.positive_tiles[s].any()
            ]
        )
        instance_auc = auc(scores, truth_tiles)
        print(f"{model}: held-out instance AUC {instance_auc:.3f}")
        assert instance_auc > 0.75, f"{model}: instance AUC {instance_auc:.2f}"


def test_train_writes_reusable_outputs(pseudo_cohort: PseudoCohort, tmp_path: Path) -> None:
    result = train(_config(pseudo_cohort, tmp_path / "run", model="abmil"))
    out = result.out
    for name in ("config.json", "splits.json", "predictions.csv", "metrics.json", "metrics.txt"):
        assert (out / name).is_file(), name
    assert len(result.fold_dirs) == 3
    for fold in result.fold_dirs:  # the training features' provenance travels with the model
        provenance = json.loads((fold / "model.json").read_text())["provenance"]
        assert provenance == {"encoder": "hg-handcrafted", "weights_sha256": "", "tile_size": 224}
    report = json.loads((out / "metrics.json").read_text())
    assert report["design"] == "kfold"
    splits_before = (out / "splits.json").read_text()
    train(_config(pseudo_cohort, tmp_path / "run", model="abmil", epochs=2))
    assert (out / "splits.json").read_text() == splits_before  # reused, never redrawn


def test_leave_one_center_out_reports_each_center(
    pseudo_cohort: PseudoCohort, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from histoguard.cli import app

    random_split = train(_config(pseudo_cohort, tmp_path / "kfold", model="mean-pool", epochs=5))
    result = train(
        _config(
            pseudo_cohort,
            tmp_path / "loco",
            model="mean-pool",
            split="leave-one-center-out",
            epochs=5,
        )
    )
    assert len(result.fold_dirs) == 2
    assert set(result.report["centers"]) == {"center0", "center1"}
    compared = CliRunner().invoke(app, ["compare", str(random_split.out), str(result.out)])
    assert compared.exit_code == 0, compared.output
    assert "Reading:" in compared.output


def test_reloaded_model_in_a_fresh_process_predicts_identically(
    pseudo_cohort: PseudoCohort, tmp_path: Path
) -> None:
    result = train(_config(pseudo_cohort, tmp_path / "run", model="abmil", epochs=3))
    files = sorted(pseudo_cohort.features.glob("*.h5"))[:5]
    here = predict(result.out, files, tmp_path / "here")
    code = (
        "import sys, json; from histoguard.mil import predict; "
        "r = predict(sys.argv[1], sys.argv[3:], sys.argv[2]); "
        "print(json.dumps([x.probabilities for x in r]))"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, str(result.out), str(tmp_path / "there"), *map(str, files)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert json.loads(run.stdout.strip().splitlines()[-1]) == [r.probabilities for r in here]
    _, labels = load_model(result.fold_dirs[0])
    assert labels == ["normal", "tumour"]


def test_cli_train_then_predict(pseudo_cohort: PseudoCohort, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from histoguard.cli import app

    settings = tmp_path / "train.yaml"
    settings.write_text(
        f"cohort: {pseudo_cohort.table}\nfeatures: {pseudo_cohort.features}\n"
        f"model: abmil\nsplit: kfold\nk: 3\nepochs: 3\nn_boot: 100\n"
    )
    runner = CliRunner()
    trained = runner.invoke(app, ["train", str(settings), "--out", str(tmp_path / "run")])
    assert trained.exit_code == 0, trained.output
    assert (
        "AUC" in trained.output
        and json.loads((tmp_path / "run" / "config.json").read_text())["k"] == 3
    )
    files = sorted(map(str, pseudo_cohort.features.glob("*.h5")))[:3]
    predicted = runner.invoke(
        app, ["predict", *files, "--model", str(tmp_path / "run"), "--out", str(tmp_path / "pred")]
    )
    assert predicted.exit_code == 0, predicted.output
    rows = (tmp_path / "pred" / "predictions.csv").read_text().splitlines()
    header = "slide,decision,reason,predicted,prediction_set,ood_p_value,p_normal,p_tumour"
    assert rows[0].startswith(header) and len(rows) == 4
    assert (tmp_path / "run" / "trust.json").is_file() and "trust on" in trained.output
    # The pseudo-slides have no slide file: the QuPath map is written, the overlay is not
    # drawn on a blank canvas, and the user is told why.
    geojson = json.loads((tmp_path / "pred" / "bag000.attention.geojson").read_text())
    corners = geojson["features"][0]["geometry"]["coordinates"][0]
    assert corners[2][0] - corners[0][0] == TILE_SIZE0
    assert not (tmp_path / "pred" / "bag000.attention.png").exists()
    assert "cannot reopen the slide" in predicted.output
    bad = runner.invoke(
        app, ["train", str(settings), "--out", str(tmp_path / "x"), "--split", "nope"]
    )
    assert bad.exit_code == 2
    missing = runner.invoke(
        app, ["predict", *files, "--model", str(tmp_path), "--out", str(tmp_path / "p")]
    )
    assert missing.exit_code == 1 and "model.json" in missing.output


def test_predict_averages_the_folds(pseudo_cohort: PseudoCohort, tmp_path: Path) -> None:
    result = train(_config(pseudo_cohort, tmp_path / "run", model="abmil", epochs=3))
    files = sorted(pseudo_cohort.features.glob("*.h5"))[:4]
    ensemble = predict(result.out, files, tmp_path / "all")
    per_fold = [predict(fold, files, tmp_path / fold.name) for fold in result.fold_dirs]
    assert len(per_fold) == 3
    for i, prediction in enumerate(ensemble):
        # Before calibration: each fold's folder has its own temperature, the ensemble its own.
        for label, p in prediction.raw_probabilities.items():
            folds = [fold[i].raw_probabilities[label] for fold in per_fold]
            assert p == pytest.approx(float(np.mean(folds)), abs=1e-6), (prediction.slide, label)
            assert len({round(f, 6) for f in folds}) > 1  # the folds differ: a real average
        assert prediction.attention is not None
        np.testing.assert_allclose(
            prediction.attention, np.mean([fold[i].attention for fold in per_fold], axis=0)
        )


def test_train_logs_every_epoch_and_draws_progress(
    pseudo_cohort: PseudoCohort, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="histoguard.mil"):
        train(_config(pseudo_cohort, tmp_path / "run", model="mean-pool", epochs=2), progress=True)
    epochs = [r.getMessage() for r in caplog.records if " epoch " in r.getMessage()]
    assert len(epochs) == 3 * 2, epochs
    assert all("train loss" in m and "validation loss" in m for m in epochs)
    assert {m.split(" epoch ")[0] for m in epochs} == {"fold0", "fold1", "fold2"}
