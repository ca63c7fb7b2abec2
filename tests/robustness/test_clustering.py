"""Clustering score: +1 when clusters follow the class, -1 when they follow the center, in
between when both show; K found by the silhouette; clear errors when class and center cannot be
told apart."""

from __future__ import annotations

import json

import numpy as np
import pytest

from histoguard.errors import AuditDataError, ConfigError
from histoguard.robustness.data._containers import LabelledEmbeddings
from histoguard.robustness.data._synthetic import planted_embeddings
from histoguard.robustness.metrics._clustering import ClusteringConfig, clustering_score
from histoguard.robustness.metrics._stats import balanced_cells

#: A small K range and two repeats keep each test well under a second.
FAST = ClusteringConfig(k_max=8, n_repeats=2)


def _planted(class_strength: float, center_strength: float, **kwargs: int) -> LabelledEmbeddings:
    return planted_embeddings(
        slides_per_cell=2,
        tiles_per_slide=25,
        dim=32,
        class_strength=class_strength,
        center_strength=center_strength,
        **kwargs,
    )


def test_clusters_of_classes_score_plus_one() -> None:
    result = clustering_score(_planted(2.0, 0.0), FAST)
    assert result.value > 0.8
    assert result.ari_class > 0.9
    assert abs(result.ari_center) < 0.1
    # Two well-separated blobs: the silhouette picks K = 2 in every repeat.
    assert result.subsets[0].k == (2, 2)


def test_clusters_of_centers_score_minus_one() -> None:
    result = clustering_score(_planted(0.0, 2.0), FAST)
    assert result.value < -0.8
    assert result.ari_center > 0.9


def test_mixed_signal_scores_in_between() -> None:
    # Class and center equally strong: four blobs, which split both ways alike.
    result = clustering_score(_planted(1.5, 1.5), FAST)
    assert -0.5 < result.value < 0.5
    assert 0.2 < result.ari_class < 0.8
    assert 0.2 < result.ari_center < 0.8
    assert result.subsets[0].k == (4, 4)


def test_every_two_by_two_subset_is_scored_up_to_the_cap() -> None:
    data = _planted(2.0, 0.0, n_classes=3, n_centers=3)
    result = clustering_score(data, ClusteringConfig(k_max=6, n_repeats=1, max_subsets=4))
    assert result.n_subsets_available == 9
    assert len(result.subsets) == 4
    assert len({(s.classes, s.centers) for s in result.subsets}) == 4
    assert all(np.mean(s.scores) > 0.8 for s in result.subsets)


def test_cells_are_balanced_and_capped() -> None:
    # center1 holds a fifth as many class0 items as the other cells: every cell is cut to its
    # size (or to the cap), so no center outweighs the other in the clusters.
    data = _planted(2.0, 0.0)
    small = (data.center == "center1") & (data.label == "class0")
    data = data.subset(~small | (np.cumsum(small) <= 10))
    rng = np.random.default_rng(0)
    pairs = (("class0", "class1"), ("center0", "center1"))
    for cap, expected in ((None, 10), (8, 8)):
        rows = balanced_cells(data.label, data.center, *pairs, cap, rng)
        cells = np.char.add(data.label[rows], data.center[rows])
        assert sorted(np.unique(cells, return_counts=True)[1].tolist()) == [expected] * 4
        assert len(set(rows.tolist())) == rows.size
    result = clustering_score(data, ClusteringConfig(k_max=6, max_items_per_cell=8))
    assert result.value > 0.8


def test_summary_is_json_and_reproducible() -> None:
    data = _planted(1.0, 1.0)
    summary = clustering_score(data, FAST).to_dict()
    assert json.loads(json.dumps(summary)) == summary
    assert summary == clustering_score(data, FAST).to_dict()
    assert set(summary) >= {"value", "std", "ci", "ari_class", "ari_center", "per_subset"}
    subset = summary["per_subset"][0]
    assert subset["classes"] == ["class0", "class1"]
    assert subset["centers"] == ["center0", "center1"]
    assert subset["score"] == pytest.approx(subset["ari_class"] - subset["ari_center"])
    assert summary["ci"][0] <= summary["value"] <= summary["ci"][1]


def test_needs_two_centers_that_share_two_classes() -> None:
    one_center = _planted(2.0, 0.0, n_centers=1)
    with pytest.raises(AuditDataError, match="two centers"):
        clustering_score(one_center, FAST)
    data = _planted(2.0, 0.0)
    # Each center holds only one class: class and center are the same partition.
    confounded = data.subset(
        ((data.center == "center0") & (data.label == "class0"))
        | ((data.center == "center1") & (data.label == "class1"))
    )
    with pytest.raises(AuditDataError, match="share two classes"):
        clustering_score(confounded, FAST)
    with pytest.raises(ConfigError, match="k_min"):
        ClusteringConfig(k_min=1)


def test_real_colour_features_cluster_by_center(colorectal_embeddings: LabelledEmbeddings) -> None:
    # Colour and texture statistics of GlaS (UK) and EBHI (China) tiles group by hospital rather
    # than by benign/malignant (measured -0.37).
    result = clustering_score(colorectal_embeddings, ClusteringConfig(k_max=10, n_repeats=2))
    assert np.isfinite(result.value)
    assert result.value < -0.1
    assert result.ari_center > result.ari_class
