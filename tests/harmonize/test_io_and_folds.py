"""Saving and loading (safetensors + JSON, no pickles), and leak-free cross-validation."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from histoguard.errors import ConfigError, UnknownCenterError
from histoguard.harmonize import (
    HARMONIZER_ARRAYS,
    HARMONIZER_JSON,
    Harmonizer,
    design_from_labels,
    harmonize_folds,
    load_harmonizer,
    save_harmonizer,
)

from .conftest import Centers


@pytest.mark.parametrize("method", ["combat", "covbat"])
def test_save_and_load_round_trip(centers: Centers, tmp_path: Path, method: str) -> None:
    h = Harmonizer(method=method, parametric=False).fit(  # type: ignore[arg-type]
        centers.x, centers.batch, design_from_labels(centers.y)
    )
    with pytest.warns(UserWarning):
        h.fit_new_center(centers.x[:30] + 1.0, "new")
    save_harmonizer(h, tmp_path / "h")
    assert sorted(p.name for p in (tmp_path / "h").iterdir()) == sorted(
        [HARMONIZER_JSON, HARMONIZER_ARRAYS]
    )
    document = json.loads((tmp_path / "h" / HARMONIZER_JSON).read_text())
    assert document["settings"]["method"] == method and document["histoguard_version"]
    assert [c["label_free"] for c in document["centers"]] == [False, False, False, True]
    loaded = load_harmonizer(tmp_path / "h")
    assert loaded.centers == h.centers and loaded.parametric is False
    batch = np.array([*centers.batch[:20], *["new"] * 5])
    x = np.vstack([centers.x[:20], centers.x[:5]])
    np.testing.assert_array_equal(loaded.transform(x, batch), h.transform(x, batch))


def test_load_refuses_what_is_not_a_harmonizer(tmp_path: Path, centers: Centers) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        load_harmonizer(tmp_path)
    save_harmonizer(Harmonizer().fit(centers.x, centers.batch), tmp_path)
    path = tmp_path / HARMONIZER_JSON
    path.write_text(path.read_text().replace("histoguard-harmonizer", "other"))
    with pytest.raises(ConfigError, match="histoguard-harmonizer"):
        load_harmonizer(tmp_path)
    with pytest.raises(ConfigError, match="not fitted"):
        save_harmonizer(Harmonizer(), tmp_path / "x")


def _splits(n: int, k: int = 3) -> list[tuple[np.ndarray, np.ndarray]]:
    order = np.random.default_rng(0).permutation(n)
    parts = np.array_split(order, k)
    return [
        (np.sort(np.concatenate(parts[:i] + parts[i + 1 :])), np.sort(parts[i])) for i in range(k)
    ]


@pytest.mark.parametrize("method", ["combat", "covbat"])
def test_held_out_rows_never_reach_the_fit(centers: Centers, method: str) -> None:
    """Perturb every held-out row's features, label and center: each fold's fitted parameters
    and its training rows' output stay identical; only the held-out outputs change."""
    splits = _splits(len(centers.x))
    base = harmonize_folds(
        centers.x,
        centers.batch,
        splits,
        labels=centers.y,
        method=method,  # type: ignore[arg-type]
    )
    rng = np.random.default_rng(9)
    for fold, (_, test) in enumerate(splits):
        x, y, batch = centers.x.copy(), centers.y.copy(), centers.batch.copy()
        x[test] += rng.normal(0.0, 5.0, (len(test), x.shape[1]))
        y[test] = 1 - y[test]
        batch[test] = np.roll(batch[test], 7)  # other (known) centers
        again = harmonize_folds(x, batch, splits, labels=y, method=method)  # type: ignore[arg-type]
        a, b = base[fold], again[fold]
        assert a.harmonizer.state is not None and b.harmonizer.state is not None
        for name in ("grand_mean", "var_pooled", "beta", "gamma", "delta"):
            np.testing.assert_array_equal(
                getattr(a.harmonizer.state, name), getattr(b.harmonizer.state, name)
            )
        np.testing.assert_array_equal(a.train_features, b.train_features)
        assert not np.allclose(a.test_features, b.test_features)


def test_a_held_out_center_is_refused_or_fitted_label_free(centers: Centers) -> None:
    rows = np.arange(len(centers.x))
    held = rows[centers.batch == "center2"]
    splits = [(rows[centers.batch != "center2"], held)]
    with pytest.raises(UnknownCenterError):
        harmonize_folds(centers.x, centers.batch, splits)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        folds = harmonize_folds(centers.x, centers.batch, splits, new_centers="label-free")
    assert any("label-free" in str(w.message) for w in caught)
    assert folds[0].harmonizer.state is not None
    assert folds[0].harmonizer.state.label_free == ("center2",)
    with pytest.raises(ConfigError, match="overlap"):
        harmonize_folds(centers.x, centers.batch, [(rows[:100], rows[90:])])
