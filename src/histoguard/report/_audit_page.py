"""The audit as one self-contained HTML page: a plot per measurement, each with a one-line reading.

The page reads only an :class:`~histoguard.robustness.AuditResult` (what ``run_audit`` returns)
or the ``audit.json`` it was saved as, so it can be rebuilt from a saved audit; it never runs a
model. Each reading comes from :mod:`._readings` and says "inconclusive" when a confidence
interval spans the reading's threshold. Plots are PNGs embedded as data URIs: the file can be
mailed or attached to a validation record without its folder. Matplotlib is used through its
object API (``Figure`` + Agg canvas), which leaves the user's global backend untouched.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from histoguard.core._verdict import verdict
from histoguard.report._readings import (
    RI_THRESHOLDS,
    RI_VERDICTS,
    apd_reading,
    clustering_reading,
    ri_reading,
    site_probe_reading,
)
from histoguard.robustness._result import (
    AdversarialSection,
    APDSection,
    AuditResult,
    ClusteringSection,
    RobustnessIndexSection,
    SiteProbeSection,
    Skipped,
    StressSection,
)

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; color: #222; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.2rem; margin-top: 2rem; border-bottom: 1px solid #ccc; }
.reading { background: #f4f6f8; border-left: 4px solid #4a78a8; padding: .5rem .8rem; }
.skipped { color: #777; font-style: italic; }
table { border-collapse: collapse; margin: .5rem 0; } td, th { padding: .2rem .6rem;
  border-bottom: 1px solid #ddd; text-align: right; }
th:first-child, td:first-child { text-align: left; }
img { max-width: 100%; }
"""


def render_audit_html(audit: AuditResult | Mapping[str, Any]) -> str:
    """The HTML page of an audit: an :class:`~histoguard.robustness.AuditResult`, or the
    content of ``audit.json`` (read with :meth:`AuditResult.from_json`).

    Sections whose part is :class:`~histoguard.robustness.Skipped` (or missing) say why.

    Raises:
        AuditDataError: ``audit`` is a mapping that is not an audit.
    """
    result = audit if isinstance(audit, AuditResult) else AuditResult.from_json(audit)
    meta = result.metadata
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>histoguard audit: {_e(str(meta.get('subject', '')))}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>Robustness audit: {_e(str(meta.get('subject', '')))}</h1>",
        _metadata_table(meta),
    ]
    slide_model = meta.get("slide_model")
    if isinstance(slide_model, Mapping):
        parts.append(_reading(_models_line(slide_model)))
    sections: Sequence[tuple[str, Any, Callable[[Any], str]]] = (
        ("Robustness index (PathoROB)", result.robustness_index, _ri_section),
        ("Average performance drop under center-class confounding", result.apd, _apd_section),
        ("Clustering score", result.clustering_score, _clustering_section),
        ("Site probe: can the hospital be predicted?", result.site_probe, _site_probe_section),
        ("Stain, scanner and geometry stress tests", result.stress, _stress_section),
        ("Adversarial attacks", result.adversarial, _adversarial_section),
    )
    for title, section, render in sections:
        parts.append(f"<h2>{_e(title)}</h2>")
        if isinstance(section, Skipped):
            parts.append(f"<p class='skipped'>Skipped: {_e(section.reason)}</p>")
        else:
            parts.append(render(section))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_audit_page(audit: AuditResult | Mapping[str, Any] | str | Path, out: Path) -> Path:
    """Draw the audit page and write it (atomically) to ``out`` (e.g. ``OUT/audit.html``).

    Args:
        audit: an :class:`~histoguard.robustness.AuditResult`, the content of ``audit.json``,
            or the path of an ``audit.json``. No model runs: the page only reads results.
        out: the HTML file to write; its folder is created.

    Returns:
        ``out``.

    Raises:
        AuditDataError: ``audit`` cannot be read as an audit (the message names the file).
        OutputError: the page could not be written as intended.
    """
    from histoguard.core._atomic import write_bytes_atomic

    result = audit if isinstance(audit, AuditResult) else AuditResult.from_json(audit)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out, render_audit_html(result).encode())
    return out


def _models_line(described: Mapping[str, Any]) -> str:
    """Which slide models the stress test and attack used."""
    models = [str(m) for m in described.get("models", [])]
    n = described.get("n_models", len(models))
    how = described.get("combination", "")
    if n and n > 1:
        return f"Slide model: the ensemble of {n} fold models ({how}): {', '.join(models)}."
    return f"Slide model: {', '.join(models) or 'one model'} ({how or 'single model'})."


# Every plot of a share or an accuracy: 0 to a little above 1, so a line at 1.0 stays visible.
_UNIT_RANGE = (0.0, 1.05)


# --- sections ---------------------------------------------------------------------------------


def _ri_section(section: RobustnessIndexSection) -> str:
    ri = section.details
    acc = ri.get("knn_balanced_accuracy") or {}
    at_k = dict(zip(acc.get("k", []), acc.get("balanced_accuracy", []), strict=False))
    parts = [
        _reading(
            ri_reading(
                section.value, section.ci, section.k, k_selection=section.k_selection,
                knn_accuracy=at_k.get(section.k), confidence=section.confidence,
            )
        )
    ]  # fmt: skip
    counts = ri.get("counts") or {}
    total = sum(counts.values())
    if total and (counts.get("SO", 0) + counts.get("OS", 0)) < 0.05 * total:
        share = (counts.get("SO", 0) + counts.get("OS", 0)) / total
        parts.append(
            _reading(
                f"Caution: only {share:.1%} of the neighbours up to k differ from their query in "
                "exactly one of class and center, so the index rests on few neighbours; read "
                "the curve at larger k."
            )
        )
    curve, comp = ri["curve"], ri["composition"]

    def draw_curve(ax: Axes) -> None:
        ax.plot(curve["k"], _nan(curve["ri"]), label="all queries")
        paired = ri.get("paired") or {}
        if paired.get("value") is not None and paired.get("curve"):
            ax.plot(paired["curve"]["k"], _nan(paired["curve"]["ri"]), label="paired 2×2 design")
        ax.axhline(0.5, color="grey", linestyle=":", linewidth=1)
        ax.axvline(section.k, color="black", linestyle="--", linewidth=1,
                   label=f"headline k = {section.k}")  # fmt: skip
        ax.plot([section.k], [section.value], marker="o", color="black")
        ax.set(xlabel="k (neighbours)", ylabel="robustness index", ylim=_UNIT_RANGE)
        ax.legend()

    def draw_composition(ax: Axes) -> None:
        names = {
            "SS": "same class, same center",
            "SO": "same class, other center",
            "OS": "other class, same center",
            "OO": "other class, other center",
        }
        for key, name in names.items():
            ax.plot(comp["k"], _nan(comp[key]), label=name)
        ax.set(xlabel="k (neighbours)", ylabel="fraction of neighbours", ylim=_UNIT_RANGE)
        ax.legend(fontsize="small")

    parts.append(_figure(draw_curve, "RI(k): share of same-class-other-center neighbours"))
    parts.append(_figure(draw_composition, "Neighbour composition up to rank k"))
    paired = ri.get("paired") or {}
    if paired.get("value") is not None:
        ci = paired.get("ci")
        parts.append(
            _reading(
                f"Paired design ({paired.get('n_subsets')} balanced 2 classes × 2 centers "
                f"subsets): " + _verdict_line("RI", paired["value"], ci, RI_THRESHOLDS, RI_VERDICTS)
            )
        )
    elif paired.get("reason"):
        parts.append(f"<p class='skipped'>Paired design: {_e(paired['reason'])}</p>")
    if acc and acc.get("k"):
        rows = list(zip(acc["k"], acc["balanced_accuracy"], strict=True))
        parts.append(
            _table(
                ["k", "kNN balanced accuracy (class)"],
                [[k, "–" if a is None else f"{a:.3f}"] for k, a in rows],
            )
        )
    return "\n".join(parts)


def _verdict_line(
    name: str,
    value: float,
    ci: Sequence[float] | None,
    thresholds: Sequence[float],
    verdicts: Sequence[str],
) -> str:
    """``"<name> = v (95 % CI a to b): <verdict>."``"""
    interval = "" if not ci or None in ci else f" (95 % CI {ci[0]:.2f} to {ci[1]:.2f})"
    return f"{name} = {value:.2f}{interval}: {verdict(value, ci, thresholds, verdicts)}."


def _apd_section(section: APDSection) -> str:
    parts = [
        _reading(
            apd_reading(
                section.in_distribution, section.out_of_distribution,
                section.ci_in_distribution, section.ci_out_of_distribution,
            )
        )
    ]  # fmt: skip
    splits = section.details["splits"]

    def draw(ax: Axes) -> None:
        levels = [s["level"] for s in splits]
        ax.plot(levels, [s["accuracy_id"] for s in splits], marker="o", label="held-out slides")
        if all(s.get("accuracy_ood") is not None for s in splits):
            ax.plot(
                levels, [s["accuracy_ood"] for s in splits], marker="s", label="held-out centers"
            )
        ax.set(
            xlabel="confounding level (0 = balanced)", ylabel="balanced accuracy", ylim=_UNIT_RANGE
        )
        ax.legend()

    parts.append(_figure(draw, "Linear-probe accuracy as training data get more confounded"))
    parts.append(
        _table(
            ["level", "center–class association (Cramér's V)", "accuracy ID", "accuracy OOD"],
            [
                [
                    s["level"],
                    f"{s['center_class_correlation']:.2f}",
                    f"{s['accuracy_id']:.3f}",
                    "–" if s.get("accuracy_ood") is None else f"{s['accuracy_ood']:.3f}",
                ]
                for s in splits
            ],
        )
    )
    return "\n".join(parts)


def _clustering_section(section: ClusteringSection) -> str:
    parts = [_reading(clustering_reading(section.value, section.ci))]
    subsets = section.details.get("per_subset", [])
    if subsets:

        def draw(ax: Axes) -> None:
            ax.scatter([s["ari_center"] for s in subsets], [s["ari_class"] for s in subsets])
            ax.plot([-0.5, 1], [-0.5, 1], color="grey", linestyle=":", linewidth=1)
            # An ARI lies in [-0.5, 1]; the axes show all of it, 1.0 included.
            ax.set(xlabel="ARI with center", ylabel="ARI with class", xlim=(-0.55, 1.05),
                   ylim=(-0.55, 1.05))  # fmt: skip

        parts.append(_figure(draw, "Each 2×2 subset: agreement of clusters with class vs center"))
    return "\n".join(parts)


def _site_probe_section(section: SiteProbeSection) -> str:
    details = section.details
    parts = [
        _reading(
            site_probe_reading(
                section.auroc, section.ci, section.balanced_accuracy,
                section.ci_balanced_accuracy, max(2, len(section.centers)),
                confidence=section.confidence,
            )
        )
    ]  # fmt: skip
    folds = details.get("per_fold_auroc") or []
    cs = details.get("per_fold_c") or []
    if folds:
        parts.append(
            _table(
                ["fold (held-out slides)", "AUROC", "C chosen"],
                [
                    [i, "–" if a is None else f"{a:.3f}", c]
                    for i, (a, c) in enumerate(zip(folds, cs, strict=False))
                ],
            )
        )
    slides = details.get("slides_per_class") or {}
    if slides:
        parts.append(_table(["center", "slides"], [[c, n] for c, n in slides.items()]))
    return "\n".join(parts)


def _stress_section(section: StressSection) -> str:
    perturbations = section.perturbations
    clean = section.clean_balanced_accuracy
    tolerance = section.tolerance
    fragile = [n for n, p in perturbations.items() if p["graceful_severity"] < max(p["severities"])]
    verdict_text = (
        f"performance stays within {tolerance:.0%} of clean under every perturbation tested"
        if not fragile
        else f"performance falls by more than {tolerance:.0%} under: {', '.join(fragile)}"
    )
    parts = [
        _reading(
            f"Clean balanced accuracy {clean:.3f} on held-out tiles (slides the probe was not "
            f"trained on); {verdict_text}."
        )
    ]

    def draw(metric: str, ylabel: str) -> Callable[[Axes], None]:
        def plot(ax: Axes) -> None:
            for name, p in perturbations.items():
                ax.plot([0, *p["severities"]], [_zero(metric, clean), *p[metric]], label=name)
            ax.set(xlabel="severity (0 = clean)", ylabel=ylabel)
            if metric == "balanced_accuracy":
                ax.set_ylim(*_UNIT_RANGE)
            ax.legend(fontsize="x-small", ncol=2)

        return plot

    parts.append(_figure(draw("balanced_accuracy", "balanced accuracy"), "Accuracy vs severity"))
    parts.append(_figure(draw("drift", "embedding drift (1 − cosine)"), "Embedding drift"))
    parts.append(
        _table(
            ["perturbation", "unit", "graceful up to severity", "drift at max severity"],
            [
                [n, p.get("unit", ""), p["graceful_severity"], f"{p['drift'][-1]:.2e}"]
                for n, p in perturbations.items()
            ],
        )
    )
    slide = section.slide_model
    if isinstance(slide, Skipped):
        parts.append(f"<p class='skipped'>Slide model: {_e(slide.reason)}</p>")
    elif isinstance(slide, Mapping):
        parts.append(
            _reading(
                f"Slide model ({_models_short(slide)}): clean balanced accuracy "
                f"{slide['clean']['balanced_accuracy']:.3f} on {slide['parameters']['n_items']} "
                "held-out slides; per perturbation, the share of slide predictions that change "
                "at the highest severity:"
            )
        )
        parts.append(
            _table(
                ["perturbation", "graceful up to severity", "slides flipped at max severity"],
                [
                    [n, p["graceful_severity"], f"{p['prediction_flip_rate'][-1]:.0%}"]
                    for n, p in slide["perturbations"].items()
                ],
            )
        )
    return "\n".join(parts)


def _models_short(entry: Mapping[str, Any]) -> str:
    n = entry.get("n_models", 1)
    return f"ensemble of {n} fold models" if n and n > 1 else "one model"


def _zero(metric: str, clean: float) -> float:
    return clean if metric == "balanced_accuracy" else 0.0


def _adversarial_section(section: AdversarialSection) -> str:
    parts = []
    pgd = section.pgd
    if pgd:
        strongest = max(pgd, key=lambda r: r["eps"])
        parts.append(
            _reading(
                f"PGD ({strongest['norm']}, ε = {strongest['eps']:.4f} in 0–1 pixel units) "
                f"takes accuracy on held-out tiles from {strongest['clean_accuracy']:.2f} to "
                f"{strongest['adversarial_accuracy']:.2f}: changes invisible to a pathologist "
                "can flip the encoder's decisions."
            )
        )

        def draw(ax: Axes) -> None:
            for norm in sorted({r["norm"] for r in pgd}):
                rows = sorted((r for r in pgd if r["norm"] == norm), key=lambda r: r["eps"])
                # ε = 0 is the clean accuracy: the curve starts where the attack starts.
                ax.plot(
                    [0.0, *(r["eps"] for r in rows)],
                    [rows[0]["clean_accuracy"], *(r["adversarial_accuracy"] for r in rows)],
                    marker="o",
                    label=f"PGD {norm}",
                )
            ax.set(xlabel="budget ε (0–1 pixel scale; 0 = clean)",
                   ylabel="accuracy under attack", ylim=_UNIT_RANGE)  # fmt: skip
            ax.legend()

        parts.append(_figure(draw, "Tile accuracy under PGD"))
    universal = section.universal
    if universal:
        unseen = universal["unseen"]
        line = (
            f"One universal pattern (ε = {universal['eps']:.4f}, {universal['norm']}) learned on "
            f"other tiles takes unseen-tile accuracy from {unseen['clean_accuracy']:.2f} to "
            f"{unseen['perturbed_accuracy']:.2f}"
        )
        transfer = universal.get("transfer") or {}
        if transfer:
            line += "; transferred: " + ", ".join(
                f"{name} {t['clean_accuracy']:.2f}→{t['perturbed_accuracy']:.2f}"
                for name, t in transfer.items()
            )
        parts.append(_reading(line + "."))
    slide = section.slide
    if slide:
        parts.append(
            _reading(
                f"Perturbing {slide['fraction']:.2%} of each held-out slide's tiles (at least "
                f"one, chosen by {slide['selection']}) of the {_models_short(slide)} flips "
                f"{slide['flip_rate']:.0%} of slide predictions (mean change in "
                f"predicted-class probability {slide['mean_probability_change']:+.3f})."
            )
        )
    return "\n".join(parts) or "<p class='skipped'>No attack results.</p>"


# --- html helpers -----------------------------------------------------------------------------


def _figure(draw: Callable[[Axes], None], caption: str) -> str:
    figure = Figure(figsize=(6.4, 3.6), dpi=100, layout="constrained")
    ax = figure.add_subplot()
    draw(ax)
    ax.set_title(caption, fontsize="medium")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f"<figure><img alt='{_e(caption)}' src='data:image/png;base64,{data}'></figure>"


def _reading(text: str) -> str:
    return f"<p class='reading'>{_e(text)}</p>"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{_e(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{_e(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _metadata_table(meta: Mapping[str, Any]) -> str:
    rows = [[k, v] for k, v in meta.items() if not isinstance(v, Mapping | list)]
    return _table(["", ""], rows) if rows else ""


def _nan(values: Sequence[float | None]) -> list[float]:
    """JSON's None (an undefined point) as NaN, which matplotlib leaves as a gap."""
    return [float("nan") if v is None else v for v in values]


def _e(text: str) -> str:
    return html.escape(text, quote=True)
