"""Training with a harmoniser per split: fitted on training slides only, saved with the model,
applied by predict per slide center, and label-free for a center a split never saw."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from histoguard.errors import ConfigError, TooFewSlidesError
from histoguard.features import write_feature_file
from histoguard.harmonize import load_harmonizer
from histoguard.mil import TrainConfig, load_model, predict, train
from histoguard.mil._harmonized import HarmonizedModel, use_center

DIM = 12
CENTERS = {"A": (0.0, 1.0), "B": (3.0, 2.0), "C": (-2.0, 0.5)}


def _write_cohort(tmp_path: Path, centers: dict[str, int], seed: int = 0) -> tuple[Path, Path]:
    """Slides of 20 tiles; the class moves features 0-2, each center shifts and scales all."""
    rng = np.random.default_rng(seed)
    features = tmp_path / "features"
    features.mkdir(exist_ok=True)
    rows = ["slide_id,label,patient_id,center"]
    for center, n in centers.items():
        shift, scale = CENTERS[center]
        for i in range(n):
            label = i % 2
            x = rng.normal(size=(20, DIM))
            x[:, :3] += 1.5 * label
            x = x * scale + shift
            slide = f"{center}{i:02d}"
            coords = np.stack([np.arange(20), np.zeros(20, dtype=int)], axis=1)
            write_feature_file(features / f"{slide}.h5", x, coords, {"encoder": "planted"})
            rows.append(f"{slide},{'tumour' if label else 'normal'},{slide},{center}")
    table = tmp_path / "cohort.csv"
    table.write_text("\n".join(rows) + "\n")
    return table, features


def _config(table: Path, features: Path, out: Path, **kwargs: object) -> TrainConfig:
    options: dict[str, object] = {
        "model": "mean-pool", "epochs": 15, "patience": 15, "lr": 5e-3, "n_boot": 50, "k": 2,
        "harmonize": "combat", "harmonize_tiles": 10,
    }  # fmt: skip
    options.update(kwargs)
    return TrainConfig(cohort=table, features=features, out=out, **options)  # type: ignore[arg-type]


def test_each_fold_saves_its_harmoniser_and_predict_applies_it(tmp_path: Path) -> None:
    table, features = _write_cohort(tmp_path, {"A": 16, "B": 16})
    result = train(_config(table, features, tmp_path / "run"))
    fold = result.out / "fold_0"
    assert (fold / "harmonizer" / "harmonizer.json").is_file()
    model, _ = load_model(fold)
    assert isinstance(model, HarmonizedModel)
    assert set(model.centers) == {"A", "B"}
    # The saved model's predictions on its test slides are the ones train reported.
    rows = [line.split(",") for line in (result.out / "predictions.csv").read_text().split()[1:]]
    test = {r[1]: float(r[5]) for r in rows if r[0] == "fold_0"}
    files = [features / f"{s}.h5" for s in test]
    centers = {s: s[0] for s in test}
    got = predict(fold, files, tmp_path / "pred", centers=centers)
    for prediction in got:
        expected = test[prediction.slide]
        assert prediction.raw_probabilities["tumour"] == pytest.approx(expected, abs=1e-5)


def test_predict_refuses_slides_without_a_center(tmp_path: Path) -> None:
    table, features = _write_cohort(tmp_path, {"A": 16, "B": 16})
    result = train(_config(table, features, tmp_path / "run", calibration_fraction=0.0))
    with pytest.raises(ConfigError, match="--centers"):
        predict(result.out / "fold_0", [features / "A00.h5"], tmp_path / "pred")


def test_the_harmoniser_sees_no_held_out_slide(tmp_path: Path) -> None:
    """Changing every held-out slide's features leaves each fold's harmoniser unchanged."""
    table, features = _write_cohort(tmp_path, {"A": 16, "B": 16})
    first = train(_config(table, features, tmp_path / "one", calibration_fraction=0.0))
    held_out = {
        line.split(",")[1]
        for line in (first.out / "predictions.csv").read_text().split()[1:]
        if line.startswith("fold_0,")
    }
    for slide in held_out:
        path = features / f"{slide}.h5"
        path.unlink()
        coords = np.stack([np.arange(20), np.zeros(20, dtype=int)], axis=1)
        write_feature_file(path, np.full((20, DIM), 50.0), coords, {"encoder": "planted"})
    second = train(_config(table, features, tmp_path / "two", calibration_fraction=0.0))
    a = load_harmonizer(first.out / "fold_0" / "harmonizer").state
    b = load_harmonizer(second.out / "fold_0" / "harmonizer").state
    assert a is not None and b is not None
    np.testing.assert_array_equal(a.gamma, b.gamma)
    np.testing.assert_array_equal(a.grand_mean, b.grand_mean)


def test_leave_one_center_out_harmonises_the_held_out_center_label_free(tmp_path: Path) -> None:
    table, features = _write_cohort(tmp_path, {"A": 24, "B": 24, "C": 24})
    config = _config(
        table, features, tmp_path / "run", split="leave-one-center-out",
        calibration_fraction=0.0, harmonize_min_slides=10,
    )  # fmt: skip
    messages: list[str] = []
    result = train(config, log=messages.append)
    assert any("label-free" in m for m in messages)
    for fold in result.fold_dirs:
        harmonizer = load_harmonizer(fold / "harmonizer")
        assert len(harmonizer.state.label_free) == 1  # type: ignore[union-attr]
    # The held-out center's slides, harmonised label-free, land on the training centers' scale.
    model, _ = load_model(result.fold_dirs[0])
    assert isinstance(model, HarmonizedModel)
    center = model.harmonizer.state.label_free[0]  # type: ignore[union-attr]
    raw = torch.tensor(np.random.default_rng(1).normal(size=(200, DIM)))
    shift, scale = CENTERS[center]
    harmonised = model.harmonize((raw * scale + shift).float(), center)
    assert abs(float(harmonised.mean()) - float(model.harmonizer.state.grand_mean.mean())) < 0.5  # type: ignore[union-attr]


def test_too_few_slides_of_an_unseen_center_is_an_error(tmp_path: Path) -> None:
    table, features = _write_cohort(tmp_path, {"A": 16, "B": 16, "C": 4})
    config = _config(
        table, features, tmp_path / "run", split="leave-one-center-out", calibration_fraction=0.0
    )
    with pytest.raises(TooFewSlidesError):
        train(config)


def test_harmonize_needs_two_centers(tmp_path: Path) -> None:
    table, features = _write_cohort(tmp_path, {"A": 16})
    with pytest.raises(ConfigError, match="at least two centers"):
        train(_config(table, features, tmp_path / "run"))


def test_a_harmonised_model_without_a_center_refuses(tmp_path: Path) -> None:
    table, features = _write_cohort(tmp_path, {"A": 16, "B": 16})
    result = train(_config(table, features, tmp_path / "run", calibration_fraction=0.0))
    model, _ = load_model(result.out / "fold_0")
    x, mask = torch.zeros(1, 3, DIM), torch.ones(1, 3, dtype=torch.bool)
    with pytest.raises(ConfigError, match="no center"):
        model(x, mask)
    with use_center(model, "A"), warnings.catch_warnings():
        warnings.simplefilter("error")
        assert model(x, mask).logits.shape == (1, 2)


def test_test_time_augmentation_averages_the_stored_views(tmp_path: Path) -> None:
    """--tta: the slide's probability is the mean over the plain bag and each stored view."""
    from histoguard.features import read_feature_file
    from histoguard.mil._bags import Bag, bag_output

    table, features = _write_cohort(tmp_path, {"A": 16, "B": 16})
    result = train(_config(table, features, tmp_path / "run", calibration_fraction=0.0))
    fold = result.out / "fold_0"
    with pytest.raises(ConfigError, match="--views"):
        predict(fold, [features / "A00.h5"], tmp_path / "p0", centers={"A00": "A"}, tta=True)
    source = read_feature_file(features / "A00.h5")
    views = np.random.default_rng(3).normal(size=(3, *source.features.shape)).astype(np.float32)
    _write_with_views(tmp_path / "views" / "A00.h5", source.features, views)
    got = predict(fold, [tmp_path / "views" / "A00.h5"], tmp_path / "p1", centers={"A00": "A"},
                  tta=True)[0]  # fmt: skip
    model, labels = load_model(fold)
    probabilities = []
    for x in (source.features, *views):
        logits, _ = bag_output(model, Bag("A00", torch.from_numpy(x.copy()), None, center="A"))
        probabilities.append(np.exp(logits) / np.exp(logits).sum())
    expected = np.mean(probabilities, axis=0)[labels.index("tumour")]
    assert got.raw_probabilities["tumour"] == pytest.approx(expected, abs=1e-6)


def _write_with_views(path: Path, features: np.ndarray, views: np.ndarray) -> None:
    from histoguard.features import write_feature_file as write

    path.parent.mkdir(parents=True, exist_ok=True)
    coords = np.stack([np.arange(len(features)), np.zeros(len(features), dtype=int)], axis=1)
    write(path, features, coords, {"encoder": "planted"}, views=views)
