"""Vahadane normalisation: a known stain matrix recovered, the reference onto itself near the
identity, deterministic; its two solvers checked against scikit-learn's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.decomposition import dict_learning
from sklearn.linear_model import Lasso

from histoguard.core._image import decode_image
from histoguard.stain import MacenkoNormalizer, VahadaneNormalizer, stain_normalizer
from histoguard.stain._optical_density import od_to_rgb, rgb_to_od
from histoguard.stain._vahadane import learn_stain_dictionary, nonnegative_lasso

#: Ruifrok-Johnston haematoxylin and Macenko's reference eosin, unit OD vectors (R, G, B).
TRUE_STAINS = np.array([[0.65, 0.70, 0.29], [0.2159, 0.8012, 0.5581]])
TRUE_STAINS = TRUE_STAINS / np.linalg.norm(TRUE_STAINS, axis=1, keepdims=True)


def _angles(found: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Degrees between matching rows of two ``(2, 3)`` unit stain matrices."""
    cosines = np.clip(np.sum(found * truth, axis=1), -1.0, 1.0)
    return np.asarray(np.degrees(np.arccos(cosines)))


def _synthetic_he(pure: float, seed: int = 0, size: int = 128) -> np.ndarray:
    """``(size, size, 3)`` uint8 image of :data:`TRUE_STAINS`: a fraction ``pure`` of the pixels
    holds only haematoxylin, as many only eosin, the rest both (concentrations uniform)."""
    rng = np.random.default_rng(seed)
    n = size * size
    kind = rng.choice(3, n, p=[pure, pure, 1 - 2 * pure])
    concentrations = np.zeros((n, 2))
    concentrations[kind == 0, 0] = rng.uniform(0.3, 1.5, (kind == 0).sum())
    concentrations[kind == 1, 1] = rng.uniform(0.5, 1.5, (kind == 1).sum())
    concentrations[kind == 2] = rng.uniform(0.1, 1.0, ((kind == 2).sum(), 2))
    return od_to_rgb(concentrations @ TRUE_STAINS).reshape(size, size, 3)


@pytest.mark.parametrize(("pure", "within_degrees"), [(0.5, 0.05), (0.45, 0.5), (1 / 3, 1.5)])
def test_recovers_a_known_stain_matrix(pure: float, within_degrees: float) -> None:
    fitted = VahadaneNormalizer.fit(_synthetic_he(pure))
    assert (_angles(fitted.stain_matrix, TRUE_STAINS) < within_degrees).all()
    np.testing.assert_allclose(np.linalg.norm(fitted.stain_matrix, axis=1), 1.0, atol=1e-9)
    assert (fitted.stain_matrix >= 0).all() and (fitted.max_concentrations > 0).all()


def test_a_swapped_stain_matrix_would_fail() -> None:
    # The check above can fail: the rows of the truth swapped are far from the fit.
    fitted = VahadaneNormalizer.fit(_synthetic_he(0.5))
    assert (_angles(fitted.stain_matrix, TRUE_STAINS[::-1]) > 20).all()


@pytest.fixture(scope="module")
def target(shared_data: Path) -> np.ndarray:
    return decode_image(shared_data / "stain_refs" / "torchstain_target.png")


def test_reference_onto_itself_is_near_identity(target: np.ndarray) -> None:
    vahadane = VahadaneNormalizer.fit(target)
    change = np.abs(vahadane.transform(target).astype(np.float64) - target).mean()
    # What is left is the OD neither stain explains, and the lasso's shrinkage: measured
    # 2.70/255 (Macenko onto itself: 1.92/255).
    assert change < 3.5
    haematoxylin, eosin = vahadane.stain_matrix
    assert haematoxylin[0] > eosin[0] and eosin[1] == eosin.max()


def test_stains_agree_with_macenko_on_real_he(target: np.ndarray) -> None:
    vahadane = VahadaneNormalizer.fit(target)
    assert (_angles(vahadane.stain_matrix, MacenkoNormalizer.fit(target).stain_matrix) < 15).all()


def test_deterministic_and_registered(target: np.ndarray) -> None:
    tiles = np.stack([target[:96, :96], target[96:192, 96:192]])
    first = stain_normalizer("vahadane", target).transform(tiles)
    again = stain_normalizer("Vahadane", target).transform(tiles)
    np.testing.assert_array_equal(first, again)
    assert np.abs(first.astype(int) - tiles).mean() > 0  # it did something


def test_nonnegative_lasso_matches_scikit_learn() -> None:
    rng = np.random.default_rng(3)
    od = np.concatenate([rng.uniform(0, 1.5, (40, 3)), rng.uniform(-0.2, 0.2, (10, 3))])
    ours = nonnegative_lasso(od, TRUE_STAINS, 0.01)
    # sklearn's objective divides the squared error by n_samples (3 channels).
    lasso = Lasso(alpha=0.01 / 3, positive=True, fit_intercept=False, tol=1e-12, max_iter=10**5)
    theirs = np.stack([lasso.fit(TRUE_STAINS.T, y).coef_ for y in od])
    np.testing.assert_allclose(ours, theirs, atol=1e-8)
    assert (ours >= 0).all() and (ours == 0).any()


def test_dictionary_matches_scikit_learn_dict_learning() -> None:
    od = rgb_to_od(_synthetic_he(1 / 3, seed=5, size=48)).reshape(-1, 3).astype(np.float64)
    od = od[(od >= 0.15).all(axis=1)]
    _, theirs, _ = dict_learning(
        od, 2, alpha=0.1, method="cd", positive_dict=True, positive_code=True,
        random_state=0, max_iter=200, tol=1e-12,
    )  # fmt: skip
    theirs = theirs / np.linalg.norm(theirs, axis=1, keepdims=True)
    theirs = theirs if theirs[0, 0] >= theirs[1, 0] else theirs[::-1]
    ours = learn_stain_dictionary(od, TRUE_STAINS)
    assert (_angles(ours, theirs) < 0.05).all()


def test_needs_tissue_in_the_reference() -> None:
    with pytest.raises(ValueError, match="cannot learn two stains"):
        VahadaneNormalizer.fit(np.full((32, 32, 3), 250, np.uint8))
