"""The linear probe: learns a planted class on unseen slides, validates C without leaking a slide,
and hands attacks a torch module that agrees with it and passes gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from histoguard.errors import AuditDataError
from histoguard.robustness.data._containers import LabelledEmbeddings
from histoguard.robustness.data._synthetic import planted_embeddings
from histoguard.robustness.metrics._linear_probe import (
    DEFAULT_C_GRID,
    LinearProbe,
    fit_linear_probe,
    validation_split,
)


def _planted(n_classes: int, class_strength: float = 1.0) -> LabelledEmbeddings:
    return planted_embeddings(
        n_classes=n_classes,
        n_centers=2,
        slides_per_cell=6,
        tiles_per_slide=20,
        dim=32,
        class_strength=class_strength,
        center_strength=1.0,
        seed=3,
    )


def _fit_on_held_in_slides(
    data: LabelledEmbeddings,
) -> tuple[LinearProbe, np.ndarray]:
    """A probe trained on about 70 % of the slides, and the rows of the other slides."""
    train, test = validation_split(data.label, groups=data.slide_id, val_fraction=0.3, seed=1)
    probe = fit_linear_probe(
        data.embeddings[train], data.label[train], groups=data.slide_id[train], seed=0
    )
    return probe, test


@pytest.mark.parametrize("n_classes", [2, 3])
def test_learns_a_planted_class_on_unseen_slides(n_classes: int) -> None:
    data = _planted(n_classes)
    probe, test = _fit_on_held_in_slides(data)
    assert probe.classes == data.classes
    assert probe.coef.shape == (1 if n_classes == 2 else n_classes, data.dim)
    assert probe.c in DEFAULT_C_GRID
    assert probe.val_balanced_accuracy > 0.9
    assert probe.balanced_accuracy(data.embeddings[test], data.label[test]) > 0.9


def test_sees_nothing_where_there_is_nothing() -> None:
    # The negative control for the test above: with no class signal the probe is at chance.
    data = _planted(2, class_strength=0.0)
    probe, test = _fit_on_held_in_slides(data)
    assert probe.balanced_accuracy(data.embeddings[test], data.label[test]) < 0.7


def test_validation_split_never_shares_a_slide() -> None:
    data = _planted(3)
    train, val = validation_split(data.label, groups=data.slide_id, val_fraction=0.2, seed=5)
    assert not set(data.slide_id[train]) & set(data.slide_id[val])
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(len(data)))
    for label in data.classes:
        # 12 slides per class, 20 % held out: round(2.4) = 2 slides.
        assert len(set(data.slide_id[val][data.label[val] == label])) == 2
        assert (data.label[train] == label).any()


def test_validation_split_without_groups_is_stratified_by_item() -> None:
    labels = np.array(["a"] * 50 + ["b"] * 10)
    train, val = validation_split(labels, val_fraction=0.2, seed=0)
    assert (labels[val] == "a").sum() == 10
    assert (labels[val] == "b").sum() == 2
    assert not set(train.tolist()) & set(val.tolist())


def test_c_ties_go_to_the_strongest_regularisation() -> None:
    # Perfectly separable classes score 1.0 at every C; the tie must go to the smallest C,
    # whatever the order of the grid.
    data = _planted(2, class_strength=4.0)
    probe = fit_linear_probe(
        data.embeddings, data.label, groups=data.slide_id, c_grid=(10.0, 0.05, 1.0)
    )
    assert probe.c == 0.05
    assert probe.val_balanced_accuracy == 1.0


@pytest.mark.parametrize("n_classes", [2, 3])
def test_torch_module_agrees_and_passes_gradients(n_classes: int) -> None:
    data = _planted(n_classes, class_strength=0.5)
    probe = fit_linear_probe(data.embeddings, data.label, groups=data.slide_id)
    module = probe.as_torch()
    x = torch.tensor(data.embeddings, requires_grad=True)
    logits = module(x)
    assert logits.shape == (len(data), n_classes)
    predicted = np.asarray(probe.classes)[logits.argmax(dim=1).numpy()]
    np.testing.assert_array_equal(predicted, probe.predict(data.embeddings))
    np.testing.assert_allclose(
        torch.softmax(logits, dim=1).detach().numpy(),
        probe.predict_proba(data.embeddings),
        atol=1e-4,
    )
    torch.nn.functional.cross_entropy(logits, torch.zeros(len(data), dtype=torch.long)).backward()
    assert x.grad is not None
    assert torch.isfinite(x.grad).all()
    assert x.grad.abs().sum() > 0
    # The probe's weights are fixed: nothing for an optimiser to change.
    assert list(module.parameters()) == []


def test_predictions_are_consistent() -> None:
    data = _planted(3, class_strength=0.5)
    probe = fit_linear_probe(data.embeddings, data.label, groups=data.slide_id)
    proba = probe.predict_proba(data.embeddings)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    np.testing.assert_array_equal(
        np.asarray(probe.classes)[proba.argmax(axis=1)], probe.predict(data.embeddings)
    )


def test_bad_input_is_named() -> None:
    data = _planted(2)
    with pytest.raises(AuditDataError, match="at least two classes"):
        fit_linear_probe(data.embeddings, np.full(len(data), "tumour"))
    with pytest.raises(AuditDataError, match="one entry per embedding"):
        fit_linear_probe(data.embeddings, data.label[:-1])
    one_slide_per_class = np.where(data.label == "class0", "s0", "s1")
    with pytest.raises(AuditDataError, match="at least 2 per class"):
        fit_linear_probe(data.embeddings, data.label, groups=one_slide_per_class)
    with pytest.raises(AuditDataError, match="c_grid"):
        fit_linear_probe(data.embeddings, data.label, c_grid=())
    probe = fit_linear_probe(data.embeddings, data.label)
    with pytest.raises(AuditDataError, match=r"\(N, 32\)"):
        probe.predict(data.embeddings[:, :5])


def test_real_colour_features_see_the_center(colorectal_embeddings: LabelledEmbeddings) -> None:
    # Colour statistics of GlaS (UK) and EBHI (China) tiles differ so much that a probe tells the
    # two hospitals apart on patients it has never seen (0.97 measured).
    data = colorectal_embeddings
    train, test = validation_split(data.center, groups=data.slide_id, val_fraction=0.3, seed=0)
    probe = fit_linear_probe(
        data.embeddings[train], data.center[train], groups=data.slide_id[train]
    )
    assert probe.balanced_accuracy(data.embeddings[test], data.center[test]) > 0.9
