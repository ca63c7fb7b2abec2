"""Stress tests: graceful-severity logic, config checks, reproducibility, zero drift of the
D4-invariant encoder on real tiles, and a real-data run with a probe on handcrafted features."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import GroupShuffleSplit
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from histoguard.encoders import Encoder, EncoderInfo, load_encoder
from histoguard.errors import AuditDataError, ConfigError
from histoguard.mil import build_model
from histoguard.robustness.data._containers import LabelledEmbeddings, TileDataset, read_tile
from histoguard.robustness.shifts._perturbations import D4_PERTURBATIONS
from histoguard.robustness.shifts._stress import (
    StressConfig,
    embedding_drift,
    graceful_severity,
    stress_slide_model,
    stress_test,
)
from tests.robustness.test_perturbations import he_like_tiles


@pytest.fixture(scope="module")
def tiny_encoder() -> Encoder:
    """A 16-d random two-layer CNN on 64 px tiles: fast, deterministic."""
    module = nn.Sequential(
        nn.Conv2d(3, 8, 5, stride=2),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(0.2 * torch.randn(parameter.shape, generator=generator))
    info = EncoderInfo(
        name="tiny", embed_dim=16, input_size=64, factory=lambda weights, *, allow_pickle: module
    )
    return Encoder(info, module)


def _by_first_feature(embeddings: np.ndarray) -> np.ndarray:
    """A fixed two-class rule on embeddings, for tests that need any classifier."""
    return np.where(embeddings[:, 0] > 0.0, "high", "low")


@pytest.mark.parametrize(
    ("accuracy", "expected"),
    [
        ((0.90, 0.89, 0.88, 0.87, 0.86), 5),  # every drop within 0.05
        ((0.80, 0.90, 0.90, 0.90, 0.90), 0),  # fails at the first severity
        ((0.88, 0.86, 0.70, 0.90, 0.90), 2),  # recovering later does not count
        ((0.85, 0.85, 0.849, 0.84, 0.80), 2),  # a drop of exactly the tolerance is graceful
        ((0.95, 0.92, 0.91, 0.90, 0.84), 4),  # gains never hurt
    ],
)
def test_graceful_severity_on_a_hand_made_table(accuracy: tuple[float, ...], expected: int) -> None:
    assert graceful_severity((1, 2, 3, 4, 5), accuracy, 0.90, 0.05) == expected


def test_graceful_severity_counts_only_tested_severities() -> None:
    assert graceful_severity((2, 4), (0.88, 0.80), 0.90, 0.05) == 2
    assert graceful_severity((2, 4), (0.80, 0.90), 0.90, 0.05) == 0
    assert graceful_severity((), (), 0.9, 0.05) == 0
    with pytest.raises(AuditDataError, match="one each"):
        graceful_severity((1, 2), (0.9,), 0.9, 0.05)
    with pytest.raises(AuditDataError, match="ascending"):
        graceful_severity((2, 1), (0.9, 0.9), 0.9, 0.05)


def test_embedding_drift() -> None:
    a = np.array([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]], np.float32)
    assert embedding_drift(a, 3 * a) == pytest.approx(1 / 3)  # the zero row has cosine 0
    assert embedding_drift(a[:2], -a[:2]) == pytest.approx(2.0)
    assert embedding_drift(a[:2], a[:2, ::-1]) == pytest.approx(1.0)


def test_config_checks_and_selection() -> None:
    assert StressConfig(severities=(3, 1, 3)).severities == (1, 3)
    everything = [info.name for info, _ in StressConfig().selected()]
    assert set(D4_PERTURBATIONS) <= set(everything)
    # Without severity 1 the one-level D4 transforms have nothing to run.
    graded = {info.name: s for info, s in StressConfig(severities=(2, 5)).selected()}
    assert not set(D4_PERTURBATIONS) & set(graded)
    assert graded["blur"] == (2, 5)
    with pytest.raises(ConfigError, match="perturbations: unknown perturbation 'defocus'"):
        StressConfig(perturbations=("defocus",))
    with pytest.raises(ConfigError, match="none of the requested"):
        StressConfig(perturbations=("rot90",), severities=(2,))
    for bad in ({"severities": (0, 1)}, {"tolerance": 1.5}, {"batch_size": 0}, {"seed": -1}):
        with pytest.raises(ConfigError):
            StressConfig(**bad)  # type: ignore[arg-type]


def test_stress_test_is_reproducible_and_documented(tiny_encoder: Encoder) -> None:
    tiles = he_like_tiles(8, size=64, seed=1)
    labels = np.array(["high", "low"] * 4)
    reference = he_like_tiles(1, size=96, seed=9)[0]

    def run(batch_size: int, seed: int) -> dict[str, Any]:
        config = StressConfig(
            perturbations=("noise", "blur", "rot90"),
            severities=(1, 4),
            batch_size=batch_size,
            seed=seed,
            references={"lab": reference},
        )
        return stress_test(tiny_encoder, tiles, labels, _by_first_feature, config=config).to_dict()

    result = run(batch_size=4, seed=0)
    assert result == run(batch_size=4, seed=0)
    assert json.loads(json.dumps(result)) == result
    assert run(batch_size=4, seed=1)["perturbations"]["noise"] != result["perturbations"]["noise"]
    # Randomness is drawn per tile, so another batch size changes nothing but float rounding
    # inside the encoder.
    rebatched = run(batch_size=3, seed=0)["perturbations"]
    for name, outcome in result["perturbations"].items():
        for key, values in outcome.items():
            expected = values if key == "unit" else pytest.approx(values, rel=1e-5, abs=1e-9)
            assert rebatched[name][key] == expected, (name, key)
    assert result["n_tiles"] == 8
    assert result["parameters"]["references"] == ["lab"]
    assert result["parameters"]["encoder"] == "tiny"
    perturbations = result["perturbations"]
    assert list(perturbations) == ["noise", "blur", "rot90", "stain_transfer_lab"]
    assert perturbations["rot90"]["severities"] == [1]
    noise = perturbations["noise"]
    assert noise["parameter"] == [2.0, 12.0]
    assert noise["unit"] == "Gaussian noise std, 0-255 intensity units"
    for key in ("balanced_accuracy", "accuracy_drop", "drift", "prediction_flip_rate"):
        assert len(noise[key]) == 2
    assert noise["drift"][1] > noise["drift"][0] > 0
    drop = result["clean"]["balanced_accuracy"] - noise["balanced_accuracy"][1]
    assert noise["accuracy_drop"][1] == pytest.approx(drop)


def test_stress_test_rejects_bad_inputs(tiny_encoder: Encoder) -> None:
    encoder, tiles = tiny_encoder, he_like_tiles(4)
    config = StressConfig(perturbations=("blur",), severities=(1,))
    with pytest.raises(AuditDataError, match="one entry per tile"):
        stress_test(encoder, tiles, np.array(["a"]), _by_first_feature, config=config)
    with pytest.raises(AuditDataError, match="uint8"):
        stress_test(encoder, tiles / 255, np.array(["a"] * 4), _by_first_feature, config=config)
    with pytest.raises(AuditDataError, match="one class per item"):
        stress_test(encoder, tiles, np.array(["a"] * 4), lambda e: e, config=config)


@pytest.mark.slow
@pytest.mark.parametrize(("encoder_name", "invariant"), [("hg-d4", True), ("hg-cnn", False)])
def test_only_the_d4_encoder_ignores_rotations_and_mirrors_of_real_tiles(
    encoder_name: str, invariant: bool, colorectal_tiles: TileDataset
) -> None:
    rows = np.concatenate(
        [np.flatnonzero(colorectal_tiles.center == c)[::13][:4] for c in ("GlaS", "EBHI")]
    )
    config = StressConfig(perturbations=D4_PERTURBATIONS, severities=(1,), batch_size=8)
    labels = np.where(np.arange(len(rows)) % 2, "high", "low")  # drift needs no real labels
    result = stress_test(
        load_encoder(encoder_name),
        colorectal_tiles.load(rows),
        labels,
        _by_first_feature,
        config=config,
    )
    drift = np.array([p.drift[0] for p in result.perturbations])
    assert len(drift) == 7
    if invariant:
        assert drift.max() < 1e-5
        assert all(p.prediction_flip_rate == (0.0,) for p in result.perturbations)
    else:
        assert drift.min() > 1e-3


@pytest.mark.slow
def test_real_stress_run_with_a_probe_on_handcrafted_features(
    colorectal_tiles: TileDataset, colorectal_embeddings: LabelledEmbeddings, shared_data: Path
) -> None:
    data = colorectal_embeddings
    train, held_out = next(
        GroupShuffleSplit(n_splits=1, test_size=0.4, random_state=0).split(
            data.embeddings, groups=data.slide_id
        )
    )
    assert not set(data.slide_id[train]) & set(data.slide_id[held_out])
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    probe.fit(data.embeddings[train], data.label[train])
    held_out_accuracy = balanced_accuracy_score(
        data.label[held_out], probe.predict(data.embeddings[held_out])
    )
    assert held_out_accuracy > 0.75  # chance is 0.5
    # 8 tiles per (class, center) cell of the held-out slides keep the run short.
    rng = np.random.default_rng(0)
    test = np.sort(
        np.concatenate(
            [
                rng.choice(
                    held_out[(data.label[held_out] == c) & (data.center[held_out] == m)],
                    8,
                    replace=False,
                )
                for c in data.classes
                for m in data.centers
            ]
        )
    )
    reference = read_tile(shared_data / "stain_refs" / "histoqc_template1.png")
    config = StressConfig(
        perturbations=("blur", "jpeg"), severities=(2, 5), references={"histoqc1": reference}
    )
    result = stress_test(
        load_encoder("hg-handcrafted"),
        colorectal_tiles.load(test),
        colorectal_tiles.label[test],
        probe.predict,
        config=config,
    )
    outcomes = {p.name: p for p in result.perturbations}
    assert set(outcomes) == {"blur", "jpeg", "stain_transfer_histoqc1"}
    assert result.clean_balanced_accuracy > 0.7
    blur = outcomes["blur"]
    assert blur.parameter == (1.0, 3.0)
    assert blur.drift[1] > blur.drift[0] > 1e-4
    assert outcomes["stain_transfer_histoqc1"].drift[1] > 1e-4
    for outcome in outcomes.values():
        assert outcome.graceful_severity in (0, 2, 5)
        assert all(0.0 <= f <= 1.0 for f in outcome.prediction_flip_rate)


def _bags(
    tiles: TileDataset, n_bags: int = 4, size: int = 5
) -> tuple[list[np.ndarray], np.ndarray]:
    """Pure-class bags of real tiles: alternately benign and malignant."""
    assert tiles.images is not None
    bags, labels = [], []
    for i in range(n_bags):
        label = ("benign", "malignant")[i % 2]
        rows = np.flatnonzero(tiles.label == label)[i // 2 * size : (i // 2 + 1) * size]
        bags.append(tiles.images[rows])
        labels.append(label)
    return bags, np.array(labels)


@pytest.mark.slow
def test_slide_model_stress_counts_slides_and_d4_models_never_flip(
    colorectal_tiles: TileDataset,
) -> None:
    bags, labels = _bags(colorectal_tiles)
    config = StressConfig(perturbations=("rot90", "mirror", "blur"), severities=(1,))
    results = {}
    for name in ("hg-d4", "hg-cnn"):
        encoder = load_encoder(name)
        torch.manual_seed(0)
        model = build_model("abmil", in_dim=encoder.embed_dim, n_classes=2)
        results[name] = stress_slide_model(
            encoder, model, bags, labels, ["benign", "malignant"], config=config
        ).to_dict()
    d4 = results["hg-d4"]
    assert d4["parameters"]["n_items"] == len(bags)
    assert d4["n_tiles"] == sum(len(b) for b in bags)
    for transform in ("rot90", "mirror"):
        assert d4["perturbations"][transform]["prediction_flip_rate"] == [0.0]
        assert d4["perturbations"][transform]["drift"][0] < 1e-5
        assert results["hg-cnn"]["perturbations"][transform]["drift"][0] > 1e-3
    # It is not blind: a blur moves its embeddings by orders of magnitude more than a rotation.
    assert d4["perturbations"]["blur"]["drift"][0] > 1e3 * d4["perturbations"]["rot90"]["drift"][0]


def test_slide_model_stress_rejects_labels_the_model_does_not_know(
    colorectal_tiles: TileDataset,
) -> None:
    bags, labels = _bags(colorectal_tiles, n_bags=2, size=2)
    encoder = load_encoder("hg-d4")
    model = build_model("mean-pool", in_dim=encoder.embed_dim, n_classes=2)
    with pytest.raises(AuditDataError, match="not among the model's classes"):
        stress_slide_model(encoder, model, bags, labels, ["normal", "tumour"])
