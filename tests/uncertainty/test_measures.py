"""Uncertainty measures from stacked member probabilities (M, N, C): known answers and real data."""

from __future__ import annotations

import json

import numpy as np
import numpy.typing as npt
import pytest
from scipy.stats import entropy as scipy_entropy

from histoguard.errors import ConfigError
from histoguard.uncertainty import (
    attention_weighted_uncertainty,
    expected_entropy,
    mutual_information,
    predicted_class_variance,
    predictive_entropy,
    uncertainty_measures,
)

from .conftest import LungSplits


def _random_members(m: int, n: int, c: int, seed: int) -> npt.NDArray[np.float64]:
    rng = np.random.default_rng(seed)
    return rng.dirichlet(np.ones(c), size=(m, n))


def test_identical_members_have_no_epistemic_uncertainty() -> None:
    one = _random_members(1, 50, 4, seed=0)
    stacked = np.repeat(one, 5, axis=0)
    assert np.allclose(mutual_information(stacked), 0.0, atol=1e-12)
    assert np.allclose(predicted_class_variance(stacked), 0.0, atol=1e-15)
    assert np.allclose(predictive_entropy(stacked), expected_entropy(stacked))


def test_disagreeing_one_hot_members_give_log_2() -> None:
    stacked = np.array([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [0.0, 1.0]]])  # (2 members, 2, 2)
    mi = mutual_information(stacked)
    assert mi[0] == pytest.approx(np.log(2)) and mi[1] == pytest.approx(0.0)
    assert expected_entropy(stacked) == pytest.approx([0.0, 0.0])
    assert predictive_entropy(stacked) == pytest.approx([np.log(2), 0.0])
    assert predicted_class_variance(stacked) == pytest.approx([0.25, 0.0])


def test_uniform_members_are_all_aleatoric() -> None:
    stacked = np.full((3, 4, 5), 0.2)
    assert predictive_entropy(stacked) == pytest.approx([np.log(5)] * 4)
    assert expected_entropy(stacked) == pytest.approx([np.log(5)] * 4)
    assert mutual_information(stacked) == pytest.approx([0.0] * 4, abs=1e-12)


def test_measures_match_scipy_and_decompose() -> None:
    stacked = _random_members(6, 40, 3, seed=1)
    total = predictive_entropy(stacked)
    aleatoric = expected_entropy(stacked)
    assert total == pytest.approx(scipy_entropy(stacked.mean(axis=0), axis=1))
    assert aleatoric == pytest.approx(scipy_entropy(stacked, axis=2).mean(axis=0))
    mi = mutual_information(stacked)
    assert mi == pytest.approx(total - aleatoric)
    assert np.all(mi >= 0) and np.all(mi <= np.log(6)) and np.all(total <= np.log(3) + 1e-12)
    # variance of the mean-predicted class, by hand
    predicted = stacked.mean(axis=0).argmax(axis=1)
    by_hand = [np.var(stacked[:, i, predicted[i]]) for i in range(40)]
    assert predicted_class_variance(stacked) == pytest.approx(by_hand)


def test_uncertainty_measures_bundles_every_measure() -> None:
    stacked = _random_members(4, 10, 3, seed=2)
    bundle = uncertainty_measures(stacked)
    assert bundle.n_members == 4
    assert bundle.mean_probabilities == pytest.approx(stacked.mean(axis=0))
    assert bundle.predictive_entropy == pytest.approx(predictive_entropy(stacked))
    assert bundle.expected_entropy == pytest.approx(expected_entropy(stacked))
    assert bundle.mutual_information == pytest.approx(mutual_information(stacked))
    assert bundle.variance == pytest.approx(predicted_class_variance(stacked))
    assert len(json.loads(json.dumps(bundle.to_dict()))["variance"]) == 10


def test_attention_weighted_uncertainty() -> None:
    u = np.array([0.1, 0.5, 2.0])
    assert attention_weighted_uncertainty(u, np.array([1.0, 0.0, 0.0])) == pytest.approx(0.1)
    assert attention_weighted_uncertainty(u, np.full(3, 1 / 3)) == pytest.approx(u.mean())
    assert attention_weighted_uncertainty(u, np.array([0.2, 0.3, 0.5])) == pytest.approx(1.17)


@pytest.mark.parametrize(
    ("u", "a", "match"),
    [
        (np.ones(3), np.ones(3), "sum to 1"),
        (np.ones(3), np.array([1.5, -0.5, 0.0]), "non-negative"),
        (np.ones(3), np.full(2, 0.5), "shape"),
        (np.ones((3, 1)), np.ones((3, 1)) / 3, "shape"),
        (np.array([np.nan, 1.0]), np.full(2, 0.5), "finite"),
    ],
)
def test_attention_weighting_rejects_bad_input(
    u: npt.NDArray[np.float64], a: npt.NDArray[np.float64], match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        attention_weighted_uncertainty(u, a)


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (np.full((4, 2), 0.5), "shape"),
        (np.full((2, 3, 2), 0.6), "sum to 1"),
        (np.array([[[1.5, -0.5]]]), r"\[0, 1\]"),
        (np.zeros((0, 3, 2)), "shape"),
    ],
)
def test_measures_reject_non_probabilities(bad: npt.NDArray[np.float64], match: str) -> None:
    for measure in (predictive_entropy, expected_entropy, mutual_information):
        with pytest.raises(ConfigError, match=match):
            measure(bad)
    with pytest.raises(ConfigError, match=match):
        uncertainty_measures(bad)


def test_ensemble_uncertainty_flags_errors_on_held_out_lung_groups(lung_splits: LungSplits) -> None:
    """A bootstrap ensemble of probes (members trained on different groups): its wrong
    predictions on unseen groups carry more predictive entropy and mutual information."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler

    s = lung_splits
    x_train = np.concatenate([s.x["train"], s.x["calib"]])
    y_train = np.concatenate([s.y["train"], s.y["calib"]])
    scaler = StandardScaler().fit(x_train)
    rng = np.random.default_rng(0)
    members = []
    for _ in range(5):
        take = rng.choice(len(y_train), size=len(y_train) // 2, replace=False)
        probe = LogisticRegression(C=1.0, max_iter=2000).fit(
            scaler.transform(x_train[take]), y_train[take]
        )
        members.append(probe.predict_proba(scaler.transform(s.x["test"])))
    bundle = uncertainty_measures(np.stack(members))
    wrong = bundle.mean_probabilities.argmax(axis=1) != s.y["test"]
    auc_total = roc_auc_score(wrong, bundle.predictive_entropy)
    auc_mi = roc_auc_score(wrong, bundle.mutual_information)
    print(
        f"\nLC25000 lung, 5-member ensemble, {len(wrong)} test tiles, {wrong.sum()} wrong: "
        f"error-detection AUROC entropy {auc_total:.3f}, mutual information {auc_mi:.3f}; "
        f"mean MI right {bundle.mutual_information[~wrong].mean():.4f} "
        f"wrong {bundle.mutual_information[wrong].mean():.4f}"
    )
    assert 0 < wrong.sum() < len(wrong)
    assert auc_total > 0.7
    assert auc_mi > 0.6
