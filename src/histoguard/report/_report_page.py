"""The validation report: ``model_card.json`` and a self-contained ``report.html`` drawn from it.

The page is rendered from the card alone (a Jinja2 template under ``templates/``). Every number
and every reading on it is written by one of the template's helpers, which wrap it in
``<span data-hg="json.path">``: a reader (and the test suite) can resolve each one in
``model_card.json``. The template's own text holds no digits. Plots are PNGs embedded as data
URIs, drawn with matplotlib's object API from the card's numbers, so the file can be attached
to a validation record without its folder.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from markupsafe import Markup, escape
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from histoguard.core._atomic import write_bytes_atomic
from histoguard.report._model_card import ModelCard

CARD_NAME = "model_card.json"
PAGE_NAME = "report.html"


def resolve(document: Any, path: str) -> Any:
    """The value at a dotted ``path`` (list items by index) in a JSON document.

    Raises:
        KeyError: the path does not exist.
    """
    value = document
    for part in path.split("."):
        if isinstance(value, list):
            value = value[int(part)]
        elif isinstance(value, dict) and part in value:
            value = value[part]
        else:
            raise KeyError(path)
    return value


def format_number(value: Any) -> str:
    """How the page writes a number: integers as they are, other numbers with 3 decimals,
    a missing one as an em dash."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    return f"{float(value):.3f}"


def _helpers(card: dict[str, Any]) -> dict[str, Callable[..., Markup]]:
    def num(path: str) -> Markup:
        text = format_number(resolve(card, path))
        return Markup(f'<span class="num" data-hg="{escape(path)}">{escape(text)}</span>')

    def txt(path: str) -> Markup:
        value = resolve(card, path)
        return Markup(f'<span data-hg="{escape(path)}">{escape(str(value))}</span>')

    def key(path: str) -> Markup:
        """A dictionary key shown as a label (``_`` as spaces): ``path`` is the dict's path
        plus the key."""
        parent, _, name = path.rpartition(".")
        if name not in resolve(card, parent):
            raise KeyError(path)
        shown = name.replace("_", " ") or "(none)"
        return Markup(f'<span data-hg-key="{escape(path)}">{escape(shown)}</span>')

    def est(path: str) -> Markup:
        """value [low, high], each part its own span."""
        entry = resolve(card, path)
        out = num(f"{path}.value")
        if entry.get("low") is not None and entry.get("high") is not None:
            out += Markup(" [") + num(f"{path}.low") + Markup(", ") + num(f"{path}.high")
            out += Markup("]")
        return out

    def reading(path: str) -> Markup:
        if not resolve(card, f"{path}.reading"):
            return Markup("")
        return Markup('<div class="reading">') + txt(f"{path}.reading") + Markup("</div>")

    return {"num": num, "txt": txt, "key": key, "est": est, "reading": reading}


def _png(draw: Callable[[Axes], None], title: str, size: tuple[float, float] = (6.4, 3.4)) -> str:
    figure = Figure(figsize=size, dpi=100, layout="constrained")
    draw(figure.add_subplot())
    figure.suptitle(title, fontsize="medium")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _forest(rows: list[tuple[str, dict[str, Any]]], xlabel: str) -> Callable[[Axes], None]:
    """Points with their intervals, one row each (``rows``: label, estimate)."""

    def draw(ax: Axes) -> None:
        for i, (_, e) in enumerate(rows):
            if e.get("value") is None:
                continue
            low = e["low"] if e.get("low") is not None else e["value"]
            high = e["high"] if e.get("high") is not None else e["value"]
            ax.errorbar([e["value"]], [i], xerr=[[e["value"] - low], [high - e["value"]]],
                        fmt="o", color="#4a78a8", capsize=3)  # fmt: skip
        ax.set_yticks(range(len(rows)), [label for label, _ in rows])
        ax.invert_yaxis()
        ax.set(xlim=(0, 1.02), xlabel=xlabel)
        ax.grid(alpha=0.3)

    return draw


def _plots(card: dict[str, Any]) -> dict[str, str]:
    """The page's figures as data URIs, keyed by name."""
    from histoguard.report._reliability import reliability_png
    from histoguard.uncertainty import ReliabilityDiagram

    plots: dict[str, str] = {}
    perf = card["performance"]
    metric = (
        "auc"
        if perf["overall"]["metrics"].get("auc", {}).get("value") is not None
        else ("balanced_accuracy")
    )
    rows = [("all", perf["overall"]["metrics"][metric])]
    rows += [(f"center {s['name']}", s["metrics"][metric]) for s in perf["per_center"]]
    rows += [(f"fold {s['name']}", s["metrics"][metric]) for s in perf["per_fold"]]
    plots["performance"] = _png(_forest(rows, f"{metric.replace('_', ' ')} (interval)"),
                                "Discrimination per center and fold")  # fmt: skip
    calibration = card.get("calibration")
    if calibration:
        diagrams = {
            d["label"]: ReliabilityDiagram(
                strategy="width",
                edges=np.asarray(d["edges"], dtype=np.float64),
                confidence=np.array([np.nan if v is None else v for v in d["confidence"]]),
                accuracy=np.array([np.nan if v is None else v for v in d["accuracy"]]),
                count=np.asarray(d["count"], dtype=np.int64),
            )
            for d in calibration["diagrams"]
            if sum(d["count"])
        }
        if diagrams:
            data = reliability_png(diagrams, title="Reliability of the test slides")
            plots["reliability"] = "data:image/png;base64," + base64.b64encode(data).decode()
    trust = card.get("trust")
    if trust:
        coverage = [(f"{r['kind']} {r['name']}", r["coverage"]) for r in trust["coverage"]]
        target = 1 - trust["alpha"]

        def draw(ax: Axes) -> None:
            _forest(coverage, "coverage (Clopper-Pearson interval)")(ax)
            ax.axvline(target, color="#a8554a", linestyle="--", label="target")
            ax.legend(loc="lower left", fontsize="small")

        plots["coverage"] = _png(draw, "Conformal coverage per class and center")
    return plots


def render_report_html(card: ModelCard) -> str:
    """The HTML page of a model card (self-contained: styles and plots inline)."""
    import jinja2

    document = card.model_dump(mode="json")
    source = resources.files("histoguard.report").joinpath("templates", "report.html.j2")
    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined,
                                     trim_blocks=True, lstrip_blocks=True)  # fmt: skip
    template = environment.from_string(source.read_text(encoding="utf-8"))
    return template.render(card=document, plots=_plots(document), **_helpers(document))


def write_report(
    run_dir: str | Path,
    out: str | Path,
    *,
    audit_dir: str | Path | None = None,
    intended_use: str | Path | None = None,
    compare_run: str | Path | None = None,
    evaluation_dir: str | Path | None = None,
) -> tuple[Path, Path]:
    """Write the validation report of a train run: ``OUT/model_card.json`` and
    ``OUT/report.html`` (atomically). Reads the run's files; runs no model.

    Args:
        run_dir: a ``histoguard train`` output folder.
        out: the folder to write to (created).
        audit_dir: a ``histoguard audit`` output folder (its ``audit.json``), or None.
        intended_use: a YAML file (``statement``, ``users``, ``population``, ``exclusions``)
            that replaces the intended use derived from the run, or None.
        compare_run: the run of the other split design (k-fold vs leave-one-center-out) on
            the same cohort, for the random-split vs site-aware gap, or None.
        evaluation_dir: an ``histoguard evaluate --ood`` output, for the gate's detection of
            out-of-distribution slides, or None.

    Returns:
        The paths of ``model_card.json`` and ``report.html``.

    Raises:
        ConfigError: ``run_dir`` is missing or not a train output, or an optional input is
            unusable (one line, naming the file).
    """
    from histoguard.report._model_card_build import build_model_card

    card = build_model_card(
        run_dir, audit_dir=audit_dir, intended_use_file=intended_use,
        compare_run=compare_run, evaluation_dir=evaluation_dir,
    )  # fmt: skip
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    card_path, page_path = folder / CARD_NAME, folder / PAGE_NAME
    write_bytes_atomic(card_path, (card.model_dump_json(indent=2) + "\n").encode())
    write_bytes_atomic(page_path, render_report_html(card).encode())
    return card_path, page_path
