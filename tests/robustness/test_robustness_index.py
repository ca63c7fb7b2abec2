"""The PathoROB robustness index on embeddings with planted signals of known strength, and on
real two-center colorectal tiles."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score

from histoguard.errors import AuditDataError
from histoguard.robustness.data._containers import LabelledEmbeddings
from histoguard.robustness.data._synthetic import planted_embeddings
from histoguard.robustness.metrics._neighbours import nearest_neighbours
from histoguard.robustness.metrics._robustness_index import (
    RobustnessIndexConfig,
    robustness_index,
)


def kind_counts(data: LabelledEmbeddings, indices: np.ndarray) -> dict[str, int]:
    """SS/SO/OS/OO counted straight from the definition, for neighbour rows ``indices``."""
    same_class = data.label[indices] == data.label[:, None]
    same_center = data.center[indices] == data.center[:, None]
    return {
        "SS": int((same_class & same_center).sum()),
        "SO": int((same_class & ~same_center).sum()),
        "OS": int((~same_class & same_center).sum()),
        "OO": int((~same_class & ~same_center).sum()),
    }


def test_class_signal_alone_gives_an_index_near_one() -> None:
    data = planted_embeddings(class_strength=2, center_strength=0, seed=1)
    result = robustness_index(data)
    assert result.value > 0.9
    assert result.paired is not None and result.paired.counts is not None
    assert result.paired.counts.value > 0.9


def test_center_signal_alone_gives_an_index_near_zero() -> None:
    data = planted_embeddings(class_strength=0, center_strength=2, seed=1)
    result = robustness_index(data)
    assert result.value < 0.1
    assert result.ci[1] < 0.2


def test_index_falls_as_the_center_signal_grows() -> None:
    values = [
        robustness_index(
            planted_embeddings(class_strength=0.5, center_strength=strength, seed=0),
            RobustnessIndexConfig(k=10, paired=False),
        ).value
        for strength in (0.0, 0.25, 0.5, 0.75, 1.0)
    ]
    assert values[0] > 0.85 and values[-1] < 0.1
    assert all(a > b for a, b in itertools.pairwise(values)), values


def test_value_and_counts_follow_the_definition() -> None:
    data = planted_embeddings(class_strength=0.5, center_strength=0.5, seed=3)
    result = robustness_index(data, RobustnessIndexConfig(k=10))
    indices, _ = nearest_neighbours(data.embeddings, 10, groups=data.slide_id)
    expected = kind_counts(data, indices)
    assert result.to_dict()["counts"] == expected
    assert result.value == pytest.approx(expected["SO"] / (expected["SO"] + expected["OS"]))
    assert result.counts.ri_curve[9] == pytest.approx(result.value)


def test_own_slide_is_excluded_and_that_changes_the_counts() -> None:
    # A strong slide signal: without the exclusion, each tile's neighbours are its own slide.
    data = planted_embeddings(class_strength=1, center_strength=0.5, slide_strength=3, seed=2)
    unexcluded, _ = nearest_neighbours(data.embeddings, 10)
    assert (data.slide_id[unexcluded] == data.slide_id[:, None]).mean() > 0.95
    naive = kind_counts(data, unexcluded)

    result = robustness_index(data, RobustnessIndexConfig(k=10))
    counts = result.to_dict()["counts"]
    assert sum(counts.values()) == len(data) * 10
    # Own-slide neighbours are all SS; once excluded, the other three kinds take their place.
    assert counts["SS"] < 0.8 * naive["SS"]
    assert counts["SO"] + counts["OS"] > 3 * (naive["SO"] + naive["OS"])


def test_k_is_the_candidate_with_the_best_knn_balanced_accuracy() -> None:
    data = planted_embeddings(class_strength=0.3, center_strength=0.3, seed=4)
    result = robustness_index(data, RobustnessIndexConfig(max_k=60, paired=False))
    assert result.knn_k == (1, 3, 5, 7, 9, 11, 21, 31, 41, 51)
    indices, _ = nearest_neighbours(data.embeddings, 60, groups=data.slide_id)
    truth = (data.label == "class1").astype(int)
    # Two classes and odd k: majority votes never tie, so a plain majority is the reference.
    reference = [
        balanced_accuracy_score(truth, (truth[indices[:, :k]].mean(axis=1) > 0.5).astype(int))
        for k in result.knn_k
    ]
    np.testing.assert_allclose(result.knn_balanced_accuracy, reference)
    assert len(set(np.round(reference, 6))) > 3  # the choice is not a formality
    assert result.k_selection == "knn_balanced_accuracy"
    assert result.k == result.knn_k[int(np.argmax(reference))]

    fixed = robustness_index(data, RobustnessIndexConfig(k=4, max_k=60, paired=False))
    assert (fixed.k, fixed.k_selection) == (4, "user")


def test_interval_holds_the_value_and_narrows_with_more_slides() -> None:
    def width(slides_per_cell: int, seed: int) -> float:
        # Same number of tiles, spread over more slides; tiles of a slide share a direction.
        data = planted_embeddings(
            class_strength=0.5,
            center_strength=0.5,
            slide_strength=1.0,
            slides_per_cell=slides_per_cell,
            tiles_per_slide=240 // slides_per_cell,
            seed=seed,
        )
        result = robustness_index(data, RobustnessIndexConfig(k=10, paired=False))
        low, high = result.ci
        assert low <= result.value <= high
        return high - low

    few = np.mean([width(3, seed) for seed in range(3)])
    many = np.mean([width(24, seed) for seed in range(3)])
    assert many < 0.7 * few, (few, many)


def test_same_seed_same_result_other_seed_other_interval() -> None:
    data = planted_embeddings(class_strength=0.5, center_strength=0.5, seed=5)
    uneven = data.subset(np.flatnonzero(np.arange(len(data)) % 7 != 0))
    first = robustness_index(uneven, RobustnessIndexConfig(seed=1)).to_dict()
    again = robustness_index(uneven, RobustnessIndexConfig(seed=1)).to_dict()
    other = robustness_index(uneven, RobustnessIndexConfig(seed=2)).to_dict()
    assert json.dumps(first) == json.dumps(again)
    assert first["value"] == other["value"]
    assert first["ci"] != other["ci"]
    assert first["paired"]["value"] != other["paired"]["value"]  # another balanced subsample


def test_paired_design_uses_every_two_by_two_subset() -> None:
    data = planted_embeddings(
        n_classes=3, n_centers=3, slides_per_cell=3, tiles_per_slide=10, class_strength=0.5
    )
    result = robustness_index(data, RobustnessIndexConfig(k=5, max_items_per_cell=12))
    paired = result.to_dict()["paired"]
    assert paired["n_subsets"] == 9  # 3 class pairs x 3 center pairs
    assert paired["items_per_cell"] == [12] * 9
    counts = result.paired.counts if result.paired is not None else None
    assert counts is not None
    assert counts.cumulative[:, 4].sum() == 9 * 4 * 12 * 5  # subsets x cells x items x k
    assert 0 <= paired["value"] <= 1 and paired["ci"][0] <= paired["value"] <= paired["ci"][1]


def test_paired_design_balances_uneven_cells() -> None:
    data = planted_embeddings(class_strength=0.5, center_strength=0.5, seed=6)
    keep = ~((data.label == "class0") & (data.center == "center1")) | (
        np.arange(len(data)) % 4 == 0
    )
    result = robustness_index(data.subset(keep), RobustnessIndexConfig(k=5))
    assert result.paired is not None
    assert result.paired.items_per_cell == (25,)  # the thinned cell keeps 100 / 4


def test_paired_design_is_skipped_without_a_two_by_two_subset() -> None:
    data = planted_embeddings(n_centers=3, class_strength=0.5, center_strength=0.5)
    # class0 at centers 0 and 1, class1 at centers 1 and 2: no pair of centers holds both.
    keep = ((data.label == "class0") & (data.center != "center2")) | (
        (data.label == "class1") & (data.center != "center0")
    )
    result = robustness_index(data.subset(keep), RobustnessIndexConfig(k=5))
    paired = result.to_dict()["paired"]
    assert paired["value"] is None and "2 x 2" in paired["reason"]
    assert 0 <= result.value <= 1


def test_max_k_is_clamped_to_what_the_data_allow() -> None:
    data = planted_embeddings(slides_per_cell=2, tiles_per_slide=5)  # 40 tiles, slides of 5
    result = robustness_index(data, RobustnessIndexConfig(max_k=100))
    assert result.max_k == 35 and result.max_k_note is not None and "35" in result.max_k_note
    summary = result.to_dict()
    assert summary["curve"]["k"] == list(range(1, 36))
    with pytest.raises(AuditDataError, match="k=40"):
        robustness_index(data, RobustnessIndexConfig(k=40))


def test_summary_is_json_with_the_documented_keys() -> None:
    result = robustness_index(planted_embeddings(class_strength=0.5, center_strength=0.5))
    summary = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert set(summary) >= {
        "value", "k", "k_selection", "ci", "confidence", "curve", "composition",
        "knn_balanced_accuracy", "counts", "paired", "n_queries", "n_slides", "parameters",
    }  # fmt: skip
    composition = np.array([summary["composition"][kind] for kind in ("SS", "SO", "OS", "OO")])
    np.testing.assert_allclose(composition.sum(axis=0), 1.0)
    assert len(summary["curve"]["ri"]) == summary["max_k"] == 100
    assert (summary["n_queries"], summary["n_slides"]) == (400, 16)
    assert summary["parameters"]["n_bootstrap"] == 1000


@pytest.mark.parametrize(
    ("keep", "match"),
    [
        ("one_class", "at least 2 biological classes"),
        ("one_center", "at least 2 centers"),
        ("confounded", "no class occurs at two centers"),
    ],
)
def test_layouts_without_a_defined_index_are_refused(keep: str, match: str) -> None:
    data = planted_embeddings()
    masks = {
        "one_class": data.label == "class0",
        "one_center": data.center == "center0",
        "confounded": (data.label == "class0") == (data.center == "center0"),
    }
    with pytest.raises(AuditDataError, match=match):
        robustness_index(data.subset(masks[keep]))


@pytest.mark.parametrize(
    "settings", [{"k": 0}, {"k": 101}, {"max_k": 0}, {"confidence": 1.0}, {"n_bootstrap": 0}]
)
def test_bad_settings_are_refused(settings: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RobustnessIndexConfig(**settings)  # type: ignore[arg-type]


@pytest.mark.slow
def test_real_two_center_colour_features_see_the_center(
    colorectal_embeddings: LabelledEmbeddings,
) -> None:
    """GlaS (UK) and EBHI-Seg (China) tiles under 38-d colour/texture statistics: the two
    institutions stain and scan differently, so neighbours share the center, not the biology."""
    result = robustness_index(colorectal_embeddings)
    assert 0 <= result.value < 0.5
    assert result.ci[1] < 0.5  # the whole interval, not only the point estimate
    assert result.paired is not None and result.paired.counts is not None
    assert result.paired.counts.value < 0.5
    assert max(result.knn_balanced_accuracy) > 0.6  # the features do carry some biology
