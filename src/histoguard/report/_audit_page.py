"""The audit as one self-contained HTML page: a plot per measurement, each with a one-line reading.

The page reads only ``audit.json``'s content (the dictionary :func:`run_audit` writes), so it can
be rebuilt from a saved audit. Plots are PNGs embedded as data URIs: the file can be mailed or
attached to a validation record without its folder. Matplotlib is used through its object API
(``Figure`` + Agg canvas), which leaves the user's global backend untouched.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure

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


def render_audit_html(audit: Mapping[str, Any]) -> str:
    """The HTML page for an audit dictionary (the content of ``audit.json``).

    Sections whose entry is missing or ``{"skipped": reason}`` say why they were skipped.
    """
    meta = audit.get("metadata", {})
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>histoguard audit: {_e(meta.get('subject', ''))}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>Robustness audit: {_e(meta.get('subject', ''))}</h1>",
        _metadata_table(meta),
    ]
    sections: Sequence[tuple[str, str, Callable[[Mapping[str, Any]], str]]] = (
        ("robustness_index", "Robustness index (PathoROB)", _ri_section),
        ("apd", "Average performance drop under center-class confounding", _apd_section),
        ("clustering_score", "Clustering score", _clustering_section),
        ("stress", "Stain, scanner and geometry stress tests", _stress_section),
        ("adversarial", "Adversarial attacks", _adversarial_section),
    )
    for key, title, render in sections:
        parts.append(f"<h2>{_e(title)}</h2>")
        entry = audit.get(key)
        if not isinstance(entry, Mapping) or "skipped" in entry:
            reason = entry.get("skipped", "not run") if isinstance(entry, Mapping) else "not run"
            parts.append(f"<p class='skipped'>Skipped: {_e(str(reason))}</p>")
        else:
            parts.append(render(entry))
    parts.append("</body></html>")
    return "\n".join(parts)


# --- readings: one line saying what a number means ---------------------------------------------


def ri_reading(value: float, ci: Sequence[float] | None, k: int) -> str:
    """What a robustness index means for a reader who does not know the metric."""
    interval = f" (95% CI {ci[0]:.2f}–{ci[1]:.2f})" if ci else ""
    if value >= 0.7:
        verdict = "neighbours mostly share the biology across centers: the center signal is weak"
    elif value > 0.5:
        verdict = "biology dominates the neighbourhood, but the center is clearly visible too"
    elif value > 0.3:
        verdict = (
            "neighbours share the center more often than the biology: the embeddings encode "
            "the hospital, and downstream models can learn it"
        )
    else:
        verdict = "the neighbourhood is organised by center, not biology: a strong center signal"
    return f"RI = {value:.2f}{interval} at k = {k}: {verdict}. (1 = only biology, 0 = only center)"


def apd_reading(apd_id: float, apd_ood: float | None) -> str:
    """What the average performance drops mean."""
    ood = f", {apd_ood:+.1%} on held-out centers" if apd_ood is not None else ""
    worst = min(apd_id, apd_ood if apd_ood is not None else apd_id)
    if worst > -0.02:
        verdict = "a linear probe barely suffers when training data confound center and class"
    elif worst > -0.1:
        verdict = "confounded training data cost a linear probe noticeable accuracy"
    else:
        verdict = (
            "a probe trained on confounded data learns the center shortcut and loses much of "
            "its accuracy"
        )
    return f"APD {apd_id:+.1%} in-distribution{ood}: {verdict}. (0 = no drop)"


def clustering_reading(value: float) -> str:
    """What a clustering score means."""
    if value > 0.3:
        verdict = "unsupervised clusters follow the biology more than the center"
    elif value > -0.3:
        verdict = "unsupervised clusters follow neither biology nor center strongly"
    else:
        verdict = "unsupervised clusters follow the center more than the biology"
    return f"Clustering score {value:+.2f}: {verdict}. (+1 = biology, −1 = center)"


# --- sections ---------------------------------------------------------------------------------


def _ri_section(ri: Mapping[str, Any]) -> str:
    parts = [_reading(ri_reading(ri["value"], ri.get("ci"), ri["k"]))]
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
        ax.plot(curve["k"], curve["ri"], label="all queries")
        paired = ri.get("paired") or {}
        if paired.get("value") is not None and paired.get("curve"):
            ax.plot(paired["curve"]["k"], paired["curve"]["ri"], label="paired 2×2 design")
        ax.axhline(0.5, color="grey", linestyle=":", linewidth=1)
        ax.axvline(ri["k"], color="black", linestyle="--", linewidth=1, label=f"k = {ri['k']}")
        ax.set(xlabel="k (neighbours)", ylabel="robustness index", ylim=(0, 1))
        ax.legend()

    def draw_composition(ax: Axes) -> None:
        names = {
            "SS": "same class, same center",
            "SO": "same class, other center",
            "OS": "other class, same center",
            "OO": "other class, other center",
        }
        for key, name in names.items():
            ax.plot(comp["k"], comp[key], label=name)
        ax.set(xlabel="k (neighbours)", ylabel="fraction of neighbours", ylim=(0, 1))
        ax.legend(fontsize="small")

    parts.append(_figure(draw_curve, "RI(k): share of same-class-other-center neighbours"))
    parts.append(_figure(draw_composition, "Neighbour composition up to rank k"))
    paired = ri.get("paired") or {}
    if paired.get("value") is not None:
        ci = paired.get("ci")
        parts.append(
            _reading(
                f"Paired design ({paired.get('n_subsets')} balanced 2 classes × 2 centers "
                f"subsets): RI = {paired['value']:.2f}"
                + (f" (95% CI {ci[0]:.2f}–{ci[1]:.2f})" if ci else "")
            )
        )
    elif paired.get("reason"):
        parts.append(f"<p class='skipped'>Paired design: {_e(paired['reason'])}</p>")
    acc = ri.get("knn_balanced_accuracy")
    if acc and acc.get("k"):
        rows = list(zip(acc["k"], acc["balanced_accuracy"], strict=True))
        parts.append(
            _table(["k", "kNN balanced accuracy (class)"], [[k, f"{a:.3f}"] for k, a in rows])
        )
    return "\n".join(parts)


def _apd_section(apd: Mapping[str, Any]) -> str:
    parts = [_reading(apd_reading(apd["in_distribution"], apd.get("out_of_distribution")))]
    splits = apd["splits"]

    def draw(ax: Axes) -> None:
        levels = [s["level"] for s in splits]
        ax.plot(levels, [s["accuracy_id"] for s in splits], marker="o", label="held-out slides")
        if all(s.get("accuracy_ood") is not None for s in splits):
            ax.plot(
                levels, [s["accuracy_ood"] for s in splits], marker="s", label="held-out centers"
            )
        ax.set(xlabel="confounding level (0 = balanced)", ylabel="balanced accuracy")
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


def _clustering_section(cs: Mapping[str, Any]) -> str:
    parts = [_reading(clustering_reading(cs["value"]))]
    subsets = cs.get("per_subset", [])
    if subsets:

        def draw(ax: Axes) -> None:
            ax.scatter([s["ari_center"] for s in subsets], [s["ari_class"] for s in subsets])
            ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
            ax.set(
                xlabel="ARI with center", ylabel="ARI with class", xlim=(-0.05, 1), ylim=(-0.05, 1)
            )

        parts.append(_figure(draw, "Each 2×2 subset: agreement of clusters with class vs center"))
    return "\n".join(parts)


def _stress_section(stress: Mapping[str, Any]) -> str:
    perturbations: Mapping[str, Any] = stress["perturbations"]
    clean = stress["clean"]["balanced_accuracy"]
    tolerance = stress["tolerance"]
    fragile = [n for n, p in perturbations.items() if p["graceful_severity"] < max(p["severities"])]
    verdict = (
        f"performance stays within {tolerance:.0%} of clean under every perturbation tested"
        if not fragile
        else f"performance falls by more than {tolerance:.0%} under: {', '.join(fragile)}"
    )
    parts = [_reading(f"Clean balanced accuracy {clean:.3f}; {verdict}.")]

    def draw(metric: str, ylabel: str) -> Callable[[Axes], None]:
        def plot(ax: Axes) -> None:
            for name, p in perturbations.items():
                ax.plot([0, *p["severities"]], [_zero(metric, clean), *p[metric]], label=name)
            ax.set(xlabel="severity (0 = clean)", ylabel=ylabel)
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
    slide = stress.get("slide_model")
    if isinstance(slide, Mapping) and "skipped" in slide:
        parts.append(f"<p class='skipped'>Slide model: {_e(str(slide['skipped']))}</p>")
    elif isinstance(slide, Mapping):
        parts.append(
            _reading(
                f"Slide model: clean balanced accuracy {slide['clean']['balanced_accuracy']:.3f} "
                f"on {slide['parameters']['n_items']} slides; per perturbation, the share of "
                "slide predictions that change at the highest severity:"
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


def _zero(metric: str, clean: float) -> float:
    return clean if metric == "balanced_accuracy" else 0.0


def _adversarial_section(adv: Mapping[str, Any]) -> str:
    parts = []
    pgd = adv.get("pgd") or []
    if pgd:
        strongest = max(pgd, key=lambda r: r["eps"])
        parts.append(
            _reading(
                f"PGD ({strongest['norm']}, ε = {strongest['eps']:.4f} in 0–1 pixel units) "
                f"takes tile accuracy from {strongest['clean_accuracy']:.2f} to "
                f"{strongest['adversarial_accuracy']:.2f}: changes invisible to a pathologist "
                "can flip the encoder's decisions."
            )
        )

        def draw(ax: Axes) -> None:
            for norm in sorted({r["norm"] for r in pgd}):
                rows = sorted((r for r in pgd if r["norm"] == norm), key=lambda r: r["eps"])
                ax.plot(
                    [r["eps"] for r in rows],
                    [r["adversarial_accuracy"] for r in rows],
                    marker="o",
                    label=f"PGD {norm}",
                )
            ax.set(xlabel="budget ε (0–1 pixel scale)", ylabel="accuracy under attack")
            ax.legend()

        parts.append(_figure(draw, "Tile accuracy under PGD"))
    universal = adv.get("universal")
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
    slide = adv.get("slide")
    if slide:
        parts.append(
            _reading(
                f"Perturbing {slide['fraction']:.2%} of each slide's tiles (at least one, chosen "
                f"by {slide['selection']}) flips {slide['flip_rate']:.0%} of slide predictions "
                "(mean change in predicted-class probability "
                f"{slide['mean_probability_change']:+.3f})."
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


def _e(text: str) -> str:
    return html.escape(text, quote=True)
