"""Trust in train and predict: calibration slides held out from every split, the fitted
calibration / conformal sets / out-of-distribution gate, and the decisions they give."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from histoguard.features import read_feature_file, write_feature_file
from histoguard.mil import (
    Bag,
    Cohort,
    CohortRow,
    TrainConfig,
    TrustSettings,
    apply_trust,
    batch_drift,
    build_model,
    evaluate,
    fit_trust,
    hold_out_calibration,
    kfold_splits,
    list_models,
    load_splits,
    load_trust,
    predict,
    save_splits,
    save_trust,
    train,
)
from tests.mil.conftest import PseudoCohort


def _cohort(n_patients: int = 30) -> Cohort:
    rows = [
        CohortRow(
            slide_id=f"s{p:02d}{k}", label="tumour" if p % 2 else "normal", patient_id=f"p{p:02d}",
            center=f"c{p % 3}",
        )
        for p in range(n_patients)
        for k in "ab"
    ]  # fmt: skip
    return Cohort.from_rows(rows)


def test_calibration_patients_are_held_out_of_every_split(tmp_path: Path) -> None:
    cohort = _cohort()
    splits = hold_out_calibration(
        cohort, lambda part: kfold_splits(part, k=3), fraction=0.2, seed=1
    )
    calibration = set(splits[0].calibration)
    assert 0.1 <= len(calibration) / len(cohort.rows) <= 0.3
    assert {cohort.row(s).label for s in calibration} == {"normal", "tumour"}
    for split in splits:
        assert set(split.calibration) == calibration
        used = set(split.train) | set(split.val) | set(split.test)
        assert not used & calibration
        held_patients = {cohort.row(s).patient_id for s in calibration}
        assert not {cohort.row(s).patient_id for s in used} & held_patients
    # Saved and read back; a splits file from before calibration parts loads with none.
    path = tmp_path / "splits.json"
    save_splits(splits, path, cohort=cohort)
    assert [s.calibration for s in load_splits(path, cohort)] == [s.calibration for s in splits]
    document = json.loads(path.read_text())
    for entry in document["splits"]:
        del entry["calibration"]
    path.write_text(json.dumps(document))
    assert all(s.calibration == () for s in load_splits(path, cohort))
    assert hold_out_calibration(cohort, lambda part: kfold_splits(part, k=3), fraction=0) == (
        kfold_splits(cohort, k=3)
    )


def _fitted(rng: np.random.Generator, settings: TrustSettings | None = None):  # type: ignore[no-untyped-def]
    """A trust fitted on 60 confident, correct calibration slides of 2 classes (8-d
    embeddings from N(0, 1), the reference 200 more)."""
    labels = rng.integers(0, 2, 60)
    logits = np.where(np.eye(2)[labels] > 0, 4.0, -4.0) + rng.normal(0, 1, (60, 2))
    trust = fit_trust(
        logits, labels, rng.normal(size=(60, 8)), rng.normal(size=(200, 8)),
        class_names=["normal", "tumour"], slide_ids=[f"c{i}" for i in range(60)],
        settings=settings,
    )  # fmt: skip
    return trust


def test_decisions_name_their_reason_in_order_of_seriousness(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    trust = _fitted(rng)
    assert trust.warnings == ()
    logits = np.array([[5.0, -5.0], [0.0, 0.0], [5.0, -5.0]])
    embeddings = rng.normal(size=(3, 8))
    embeddings[2] += 12.0  # far from every training slide
    reading = apply_trust(trust, logits, embeddings, test_batch=False)
    assert reading.decisions == ("normal", "review", "review")
    assert reading.reasons == ("", "uncertain", "out-of-distribution")
    assert reading.ood_p_values[2] <= trust.settings.ood_alpha < reading.ood_p_values[0]
    # Calibrated probabilities are a proper distribution, ordered as the logits.
    np.testing.assert_allclose(reading.probabilities.sum(axis=1), 1.0)
    assert reading.probabilities[0, 0] > 0.5
    # A whole batch that moved (each slide a little) is drift; an in-distribution one is not.
    shifted = rng.normal(size=(40, 8)) + 1.0
    drift = batch_drift(trust, shifted)
    assert drift is not None and drift.p_value <= 0.01
    same = batch_drift(trust, rng.normal(size=(40, 8)))
    assert same is not None and same.p_value > 0.01
    assert batch_drift(trust, rng.normal(size=(4, 8))) is None  # too few slides to test
    moved = apply_trust(trust, np.tile([[5.0, -5.0]], (40, 1)), shifted)
    assert set(moved.reasons) <= {"batch drift", "out-of-distribution"}
    assert "batch drift" in moved.reasons
    # Saved and loaded, it decides the same.
    save_trust(trust, tmp_path)
    loaded = load_trust(tmp_path)
    assert loaded is not None
    again = apply_trust(loaded, logits, embeddings, test_batch=False)
    assert again.decisions == reading.decisions
    np.testing.assert_allclose(again.ood_p_values, reading.ood_p_values)
    np.testing.assert_allclose(again.probabilities, reading.probabilities)
    assert load_trust(tmp_path / "none") is None


def test_too_few_calibration_slides_are_named() -> None:
    rng = np.random.default_rng(1)
    labels = np.array([0, 1, 0, 1, 0])
    trust = fit_trust(
        rng.normal(size=(5, 2)), labels, rng.normal(size=(5, 4)), rng.normal(size=(30, 4)),
        class_names=["a", "b"], slide_ids=list("vwxyz"),
    )  # fmt: skip
    text = " ".join(trust.warnings)
    assert "too few for alpha=0.1" in text and "cannot flag any slide" in text


@pytest.mark.slow
def test_train_predict_evaluate_carry_trust(pseudo_cohort: PseudoCohort, tmp_path: Path) -> None:
    config = TrainConfig(
        cohort=pseudo_cohort.table, features=pseudo_cohort.features, out=tmp_path / "run",
        k=3, epochs=4, n_boot=50, calibration_fraction=0.3, ood_alpha=0.1,
    )  # fmt: skip
    result = train(config)
    run = result.out
    splits = json.loads((run / "splits.json").read_text())["splits"]
    calibration = set(splits[0]["calibration"])
    assert len(calibration) >= 9  # 1 / (n + 1) <= ood_alpha: the gate can flag a slide
    for folder in (run, *result.fold_dirs):
        assert (folder / "trust.json").is_file() and (folder / "trust.safetensors").is_file()
    # The gate's reference is what the model trained on: a fold's train and val slides (its
    # test slides would find themselves as nearest neighbours), all of them for the ensemble.
    for folder, split in zip(result.fold_dirs, splits, strict=True):
        fold_trust = load_trust(folder)
        assert fold_trust is not None
        assert fold_trust.n_reference == len(split["train"]) + len(split["val"])
    ensemble_trust = load_trust(run)
    assert ensemble_trust is not None
    assert ensemble_trust.n_reference == len(pseudo_cohort.positive_tiles) - len(calibration)
    trust = result.report["trust"]
    assert trust["n"] == len(pseudo_cohort.positive_tiles) - len(calibration)
    assert [row["name"] for row in trust["coverage"]["per_class"]] == ["normal", "tumour"]
    assert {row["name"] for row in trust["coverage"]["per_group"]} == {"center0", "center1"}
    for row in trust["coverage"]["per_class"]:
        assert row["lower"] <= row["coverage"] <= row["upper"]
    # Predict: two held-out slides, and one whose features are unlike any training slide.
    files = sorted(pseudo_cohort.features.glob("*.h5"))
    held = [f for f in files if f.stem in calibration][:2]
    data = read_feature_file(held[0])
    strange = tmp_path / "strange.h5"
    write_feature_file(strange, data.features * 0 + 50.0, data.coords, dict(data.attrs))
    results = predict(run, [*held, strange], tmp_path / "pred")
    assert results[2].decision == "review" and results[2].reason == "out-of-distribution"
    assert results[2].summary().startswith("review: out of distribution")
    for r in results:
        assert r.ood_p_value is not None and 0 < r.ood_p_value <= 1
        assert r.tile_uncertainty is not None and r.tile_uncertainty.shape == (16,)
        assert r.uncertainty["n_members"] == 3 and r.uncertainty["mutual_information"] >= 0
        if r.decision != "review":
            assert r.prediction_set == (r.decision,)
    with (tmp_path / "pred" / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    document = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    for row, entry, r in zip(rows, document["slides"], results, strict=True):
        assert row["decision"] == entry["decision"] == r.decision
        assert row["reason"] == entry["reason"] == r.reason
        assert row["prediction_set"].split("|") == entry["prediction_set"] or not r.prediction_set
        assert float(row["ood_p_value"]) == pytest.approx(entry["ood_p_value"], rel=1e-5)
    # Evaluate on the labelled held-out slides.
    table = tmp_path / "held.csv"
    lines = pseudo_cohort.table.read_text().splitlines()
    table.write_text(
        "\n".join([lines[0], *(x for x in lines[1:] if x.split(",")[0] in calibration)])
    )
    elsewhere = []
    for i in range(6):  # slides from "elsewhere": features far from every training slide
        path = tmp_path / f"elsewhere{i}.h5"
        noise = np.random.default_rng(i).normal(0, 1, data.features.shape)
        write_feature_file(path, data.features + 40.0 + noise, data.coords, dict(data.attrs))
        elsewhere.append(path)
    evaluated = evaluate(
        run, table, pseudo_cohort.features, tmp_path / "eval", n_boot=50, ood_features=elsewhere
    )
    assert evaluated.report["n"] == len(calibration)
    gate = evaluated.report["gate"]["out_of_distribution"]
    assert gate["auroc"]["value"] == 1.0 and gate["detected"]["k"] == 6
    assert gate["batch_p_value"] <= 0.01
    curve = evaluated.report["selective"]["risk_coverage"]
    assert curve["kept"][-1] == 1.0 and len(curve["kept"]) == len(curve["accuracy"])
    assert (tmp_path / "eval" / "evaluation.json").is_file()
    assert "coverage (target 0.90)" in (tmp_path / "eval" / "evaluation.txt").read_text()
    # The command line: the same evaluation, and the reliability diagram beside it.
    from typer.testing import CliRunner

    from histoguard.cli import app

    command = [
        "evaluate", "--model", str(run), "--cohort", str(table), "--features",
        str(pseudo_cohort.features), "--out", str(tmp_path / "cli"), "--n-boot", "50",
    ]  # fmt: skip
    invoked = CliRunner().invoke(app, command)
    assert invoked.exit_code == 0, invoked.output
    assert "coverage (target 0.90)" in invoked.output
    assert (tmp_path / "cli" / "reliability.png").stat().st_size > 1000
    # A model without calibration cannot be evaluated, and the message says how to fix it.
    untrusted = tmp_path / "untrusted"
    untrusted.mkdir()
    for name in ("model.json", "model.safetensors"):
        (untrusted / name).write_bytes((result.fold_dirs[0] / name).read_bytes())
    refused = CliRunner().invoke(app, [*command[:2], str(untrusted), *command[3:]])
    assert refused.exit_code != 0 and "calibration_fraction > 0" in refused.output


@pytest.mark.slow
def test_seed_ensembles_and_mc_dropout_add_members(
    pseudo_cohort: PseudoCohort, tmp_path: Path
) -> None:
    config = TrainConfig(
        cohort=pseudo_cohort.table, features=pseudo_cohort.features, out=tmp_path / "run",
        k=2, epochs=2, n_boot=20, seeds=2, calibration_fraction=0,
    )  # fmt: skip
    result = train(config)
    assert sorted(p.name for p in result.fold_dirs) == [
        "fold_0", "fold_0-seed1", "fold_1", "fold_1-seed1",
    ]  # fmt: skip
    files = sorted(pseudo_cohort.features.glob("*.h5"))[:2]
    (plain,) = predict(result.out, files[:1], tmp_path / "p0")
    (dropped,) = predict(result.out, files[:1], tmp_path / "p1", mc_dropout=3)
    assert plain.uncertainty["n_members"] == 4  # 2 folds x 2 seeds
    assert dropped.uncertainty["n_members"] == 4 * (1 + 3)
    assert plain.uncertainty["mutual_information"] > 0  # the members disagree a little
    # No calibration slides: predictions are made, and say nothing was checked.
    assert plain.ood_p_value is None and plain.prediction_set == ()
    assert "unchecked" in plain.summary()
    assert "trust" not in result.report


@pytest.mark.parametrize("name", [info.name for info in list_models()])
def test_every_model_gives_tile_and_member_probabilities(name: str) -> None:
    import torch

    from histoguard.mil._bags import member_probabilities, tile_probabilities

    torch.manual_seed(0)
    model = build_model(name, in_dim=16, n_classes=3).eval()
    bag = Bag("s", torch.randn(37, 16), None)
    tiles = tile_probabilities(model, bag, chunk=10)  # chunks of one-tile bags
    assert tiles.shape == (1, 37, 3)
    np.testing.assert_allclose(tiles.sum(axis=-1), 1.0, rtol=1e-5)
    mask = torch.ones(1, 37, dtype=torch.bool)
    members = member_probabilities(model, bag.features[None], mask, mc_dropout=2)
    has_dropout = any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules())
    assert members.shape == ((3 if has_dropout else 1), 1, 3)
    assert not model.training  # MC dropout leaves the model in eval mode
    again = member_probabilities(model, bag.features[None], mask, mc_dropout=2)
    torch.testing.assert_close(members, again)  # seeded
