"""The audit page and its readings: a reading is only as sure as its confidence interval, the
headline k is explained, the clustering score's true range is stated, plots keep 1.0 in view,
and the PGD curve starts at the clean accuracy. Pages are drawn from hand-made AuditResults, so
every number on them is known."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure

import histoguard.report._audit_page as page_module
from histoguard.core._verdict import verdict
from histoguard.report import render_audit_html, write_audit_page
from histoguard.report._readings import (
    RI_THRESHOLDS,
    RI_VERDICTS,
    apd_reading,
    clustering_reading,
    k_rule,
    ri_reading,
)
from histoguard.robustness import (
    AUDIT_PARTS,
    AdversarialSection,
    APDSection,
    AuditConfig,
    AuditResult,
    ClusteringSection,
    RobustnessIndexSection,
    SiteProbeSection,
    Skipped,
    StressSection,
    audit_embeddings,
    planted_embeddings,
)

KS = list(range(1, 11))


def _ri(
    value: float,
    ci: tuple[float, float] | None,
    k: int = 4,
    selection: str = "knn_balanced_accuracy",
) -> RobustnessIndexSection:
    return RobustnessIndexSection(
        value=value,
        ci=ci,
        k=k,
        k_selection=selection,
        details={
            "curve": {"k": KS, "ri": [1.0, *[value] * 9]},
            "composition": {"k": KS, **{kind: [0.25] * 10 for kind in ("SS", "SO", "OS", "OO")}},
            "knn_balanced_accuracy": {"k": [1, 4, 10], "balanced_accuracy": [0.8, 0.875, 0.85]},
            "counts": {"SS": 10, "SO": 10, "OS": 10, "OO": 10},
            "paired": None,
        },
    )


def _apd(value: float, ci: tuple[float, float] | None) -> APDSection:
    levels = [{"level": i, "center_class_correlation": i / 2, "accuracy_id": a,
               "accuracy_ood": None} for i, a in enumerate((1.0, 0.8, 0.54))]  # fmt: skip
    return APDSection(
        in_distribution=value,
        out_of_distribution=None,
        ci_in_distribution=ci,
        ci_out_of_distribution=None,
        details={"splits": levels},
    )


def _stress() -> StressSection:
    return StressSection(
        tolerance=0.05,
        clean_balanced_accuracy=1.0,
        perturbations={
            "blur": {
                "unit": "sigma",
                "severities": [1, 5],
                "balanced_accuracy": [1.0, 1.0],
                "drift": [0.0, 0.01],
                "graceful_severity": 5,
            },
        },
    )


def _adversarial() -> AdversarialSection:
    return AdversarialSection(
        pgd=(
            {"norm": "linf", "eps": 2 / 255, "clean_accuracy": 0.9, "adversarial_accuracy": 0.5},
            {"norm": "linf", "eps": 8 / 255, "clean_accuracy": 0.9, "adversarial_accuracy": 0.1},
        )
    )


def _site(auroc: float, ci: tuple[float, float]) -> SiteProbeSection:
    return SiteProbeSection(
        auroc=auroc, ci=ci, balanced_accuracy=0.9, ci_balanced_accuracy=(0.85, 0.95),
        centers=("A", "B"),
        details={"per_fold_auroc": [0.98, 1.0], "per_fold_c": [0.1, 1.0],
                 "slides_per_class": {"A": 6, "B": 7}},
    )  # fmt: skip


def _result(**parts: Any) -> AuditResult:
    base: dict[str, Any] = {
        "metadata": {"subject": "encoder test"},
        "robustness_index": _ri(0.8, (0.75, 0.85)),
        "apd": _apd(-0.01, (-0.015, -0.005)),
        "clustering_score": ClusteringSection(value=0.6, ci=(0.5, 0.7)),
        "site_probe": _site(0.99, (0.97, 1.0)),
        "stress": _stress(),
        "adversarial": _adversarial(),
    }
    return AuditResult(**{**base, **parts})


# --------------------------------------------------------------------------- readings


def test_a_ci_that_spans_a_threshold_gives_no_verdict() -> None:
    assert (
        verdict(0.51, (0.41, 0.62), RI_THRESHOLDS, RI_VERDICTS)
        == "inconclusive: the 95 % CI [0.41, 0.62] spans the threshold 0.50"
    )
    # Inside one band the verdict stands; without an interval it rests on the value.
    assert verdict(0.8, (0.75, 0.85), RI_THRESHOLDS, RI_VERDICTS) == RI_VERDICTS[3]
    assert verdict(0.51, None, RI_THRESHOLDS, RI_VERDICTS) == RI_VERDICTS[2]
    # The threshold nearest the value is the one named.
    assert verdict(0.35, (0.1, 0.9), RI_THRESHOLDS, RI_VERDICTS).endswith("threshold 0.30")
    with pytest.raises(ValueError, match="verdicts"):
        verdict(0.5, None, RI_THRESHOLDS, RI_VERDICTS[:2])


def test_ri_reading_with_a_wide_ci_is_inconclusive() -> None:
    text = ri_reading(0.51, (0.41, 0.62), 7)
    assert "inconclusive: the 95 % CI [0.41, 0.62] spans the threshold 0.50" in text
    assert "biology dominates" not in text


def test_apd_reading_with_a_ci_spanning_zero_is_inconclusive() -> None:
    """The page once read 'APD +5.6 %: a linear probe barely suffers' beside a 95 % CI of
    [-347 %, +359 %]."""
    text = apd_reading(0.056, None, (-3.47, 3.59))
    assert "inconclusive" in text and "barely suffers" not in text
    assert "-347.0 %" in text and "+359.0 %" in text
    assert "barely suffers" in apd_reading(0.0, None, (-0.01, 0.01))
    # The verdict is the worse of ID and OOD, with that one's interval.
    worse = apd_reading(0.0, -0.2, (-0.01, 0.01), (-0.25, -0.15))
    assert "learns the center shortcut" in worse


def test_clustering_reading_states_the_true_range_and_formats_the_value() -> None:
    """A score of +1.03 was printed beside a stated range of ±1: an ARI can be as low as -0.5,
    so the difference of two ARIs lies in [-1.5, 1.5]."""
    text = clustering_reading(1.03)
    assert text.startswith("Clustering score +1.03:")
    assert "[-1.5, +1.5]" in text
    assert "follow the biology" in text
    assert "inconclusive" in clustering_reading(0.2, (-0.1, 0.5))


def test_the_headline_k_rule_is_stated() -> None:
    assert "best" in k_rule(4, "knn_balanced_accuracy", 0.875)
    assert "0.875" in k_rule(4, "knn_balanced_accuracy", 0.875)
    assert k_rule(12, "user") == "k = 12 was set by the user (--k)"


# --------------------------------------------------------------------------- the page


def test_the_page_says_inconclusive_where_the_ci_spans_the_threshold() -> None:
    page = render_audit_html(_result(robustness_index=_ri(0.51, (0.41, 0.62))))
    assert "inconclusive: the 95 % CI [0.41, 0.62] spans the threshold 0.50" in page
    assert "biology dominates" not in page
    confident = render_audit_html(_result(robustness_index=_ri(0.6, (0.55, 0.65))))
    assert "biology dominates" in confident


def test_the_page_does_not_call_a_wide_apd_harmless() -> None:
    page = render_audit_html(_result(apd=_apd(0.056, (-3.47, 3.59))))
    assert "barely suffers" not in page
    assert "inconclusive" in page


def test_the_page_shows_the_headline_k_and_why() -> None:
    page = render_audit_html(_result(robustness_index=_ri(0.8, (0.75, 0.85), k=4)))
    assert "at k = 4" in page
    assert "Headline k: k = 4 is the number of neighbours" in page
    assert "(balanced accuracy 0.875)" in page  # the kNN balanced accuracy at the chosen k
    user = render_audit_html(_result(robustness_index=_ri(0.8, (0.75, 0.85), 9, "user")))
    assert "k = 9 was set by the user" in user


def test_the_page_states_the_clustering_range() -> None:
    page = render_audit_html(_result(clustering_score=ClusteringSection(value=1.03, ci=None)))
    assert "Clustering score +1.03" in page
    assert "[-1.5, +1.5]" in page
    assert "(+1 = biology, −1 = center)" not in page


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> dict[str, Axes]:
    """Every plot of the next page, by caption, drawn but not encoded."""
    axes: dict[str, Axes] = {}

    def capture(draw: Callable[[Axes], None], caption: str) -> str:
        ax = Figure().add_subplot()
        draw(ax)
        axes[caption] = ax
        return ""

    monkeypatch.setattr(page_module, "_figure", capture)
    return axes


def test_plots_keep_values_at_one_visible(drawn: dict[str, Axes]) -> None:
    render_audit_html(_result())
    for caption in (
        "RI(k): share of same-class-other-center neighbours",
        "Neighbour composition up to rank k",
        "Linear-probe accuracy as training data get more confounded",
        "Accuracy vs severity",
        "Tile accuracy under PGD",
    ):
        low, high = drawn[caption].get_ylim()
        assert low <= 0.0 and high > 1.0, (caption, high)


def test_the_pgd_plot_starts_at_the_clean_accuracy(drawn: dict[str, Axes]) -> None:
    render_audit_html(_result())
    (line,) = drawn["Tile accuracy under PGD"].get_lines()
    assert list(line.get_xdata()) == [0.0, 2 / 255, 8 / 255]
    assert list(line.get_ydata()) == [0.9, 0.5, 0.1]


def test_skipped_parts_say_why_and_text_is_escaped() -> None:
    page = render_audit_html(
        {"metadata": {"subject": "encoder <x>"}, "robustness_index": {"skipped": "only one center"}}
    )
    assert "encoder &lt;x&gt;" in page
    assert page.count("Skipped:") == len(AUDIT_PARTS)
    assert "only one center" in page
    typed = render_audit_html(_result(stress=Skipped(reason="needs tile images")))
    assert "Skipped: needs tile images" in typed


def test_the_page_names_the_fold_models_used() -> None:
    models = {"models": ["m/fold_0", "m/fold_1"], "n_models": 2, "combination": "mean"}
    page = render_audit_html(_result(metadata={"subject": "s", "slide_model": models}))
    assert "ensemble of 2 fold models" in page and "m/fold_1" in page


def test_write_audit_page_reads_a_saved_audit(tmp_path: Path) -> None:
    result = _result()
    (tmp_path / "audit.json").write_text(result.to_json())
    out = write_audit_page(tmp_path / "audit.json", tmp_path / "page" / "audit.html")
    assert out == tmp_path / "page" / "audit.html"
    assert out.read_text() == render_audit_html(result)
    assert "<img" in out.read_text()


def test_the_page_warns_when_the_index_rests_on_few_neighbours() -> None:
    """With class and center equally visible the nearest neighbours are all same-class,
    same-center: the index at small k counts a handful of neighbours, and the page says so."""
    config = AuditConfig(parts=("robustness_index",))
    crowded = audit_embeddings(planted_embeddings(n_centers=3, center_strength=1.0), config=config)
    counts = crowded.to_dict()["robustness_index"]["counts"]
    assert counts["SO"] + counts["OS"] < 0.05 * sum(counts.values())
    assert "Caution: only" in render_audit_html(crowded)
    mixed = audit_embeddings(planted_embeddings(n_centers=3, center_strength=0.0), config=config)
    assert "Caution: only" not in render_audit_html(mixed)


@pytest.mark.parametrize(
    ("auroc", "ci", "expected"),
    [
        (0.99, (0.97, 1.0), "tells the centers apart almost perfectly"),
        (0.55, (0.45, 0.62), "weak site signal"),
        (0.66, (0.55, 0.78), "inconclusive: the 95 % CI [0.55, 0.78] spans the threshold 0.65"),
        (0.8, (0.7, 0.95), "spans the threshold 0.90"),
    ],
)
def test_site_probe_reading_gives_a_verdict_only_off_the_thresholds(
    auroc: float, ci: tuple[float, float], expected: str
) -> None:
    page = render_audit_html(_result(site_probe=_site(auroc, ci)))
    assert "Site probe: can the hospital be predicted?" in page
    assert expected in page
    assert "chance 0.50" in page
    round_trip = AuditResult.from_json(_result(site_probe=_site(auroc, ci)).to_json())
    assert round_trip.site_probe == _site(auroc, ci)


def test_an_audit_json_without_site_probe_reads_as_not_run() -> None:
    content = _result().to_dict()
    del content["site_probe"]
    result = AuditResult.from_json(content)
    assert result.site_probe == Skipped(reason="not run")


def test_a_site_probe_below_chance_reads_the_center_inverted() -> None:
    """AUROC 0.2 [0.1, 0.3] is a probe that reads the center as well as one at 0.8."""
    from histoguard.report._readings import comparison_reading, folded_auroc, site_probe_reading

    assert folded_auroc(0.2, (0.1, 0.3)) == (0.8, (0.7, 0.9))
    assert folded_auroc(0.45, (0.4, 0.6)) == (0.55, (0.5, 0.6))
    text = site_probe_reading(0.2, (0.1, 0.3), 0.2, (0.1, 0.3), 2)
    assert "read inverted" in text and "hard to predict" not in text
    assert "hard to predict" in site_probe_reading(0.52, (0.45, 0.6), 0.5, (0.45, 0.55), 2)
    after = comparison_reading("site_probe_auroc", 1.0, 0.2, (1.0, 1.0), (0.1, 0.3))
    assert "hard to predict" not in after
