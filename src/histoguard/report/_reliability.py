"""Reliability diagrams: does a confidence of 0.8 mean 80 % right?

Each :class:`~histoguard.uncertainty.ReliabilityDiagram` (what
:func:`~histoguard.uncertainty.reliability_diagram` returns) is drawn as accuracy against the
*mean confidence of each bin*, not the bin's centre, so a point's vertical distance to the
diagonal is exactly the gap the ECE averages. Several diagrams (before and after temperature
scaling, say) share the axes; the bin counts sit underneath as step histograms, because a bin
of three cases says little however far it lies from the diagonal.

Matplotlib is used through its object API (``Figure`` + Agg canvas), as on the audit page, so
the user's global backend is left alone.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.figure import Figure

from histoguard.core._atomic import write_bytes_atomic
from histoguard.errors import ConfigError

if TYPE_CHECKING:
    from histoguard.uncertainty import ReliabilityDiagram

_STRATEGY_TEXT = {"width": "equal-width", "mass": "equal-mass"}


def _binning(diagram: ReliabilityDiagram) -> str:
    return f"{len(diagram.count)} {_STRATEGY_TEXT.get(diagram.strategy, diagram.strategy)} bins"


def legend_labels(diagrams: Mapping[str, ReliabilityDiagram]) -> tuple[list[str], str | None]:
    """The legend entry of each diagram, ``"<label> (ECE 0.032)"``, and the binning they share
    (``"15 equal-width bins"``, for the axis label), or None when it differs between them; each
    entry then names its own (``"<label>, 10 equal-mass bins (ECE 0.023)"``)."""
    binnings = {_binning(d) for d in diagrams.values()}
    shared = next(iter(binnings)) if len(binnings) == 1 else None
    labels = [
        f"{label if shared else f'{label}, {_binning(d)}'} (ECE {d.ece:.3f})"
        for label, d in diagrams.items()
    ]
    return labels, shared


def write_reliability_diagram(
    diagrams: Mapping[str, ReliabilityDiagram],
    path: str | Path,
    *,
    title: str,
) -> Path:
    """Draw one or more reliability diagrams on shared axes and write them as a PNG.

    Top panel: per non-empty bin, accuracy against mean confidence, one line per diagram, the
    diagonal of perfect calibration, and each diagram's ECE in the legend
    (``"after scaling (ECE 0.072)"``). Bottom panel: cases per bin, one step histogram per
    diagram over its own bin edges (equal-mass edges differ between diagrams).

    Args:
        diagrams: legend label -> diagram, drawn in this order, e.g.
            ``{"before scaling": d0, "after scaling": d1}``.
        path: the PNG to write (atomically; its folder is created if missing).
        title: the figure's title.

    Returns:
        ``path``, a 600 x 650 pixel PNG.

    Raises:
        ConfigError: no diagrams, or a diagram without any case.
    """
    out = Path(path)
    write_bytes_atomic(out, reliability_png(diagrams, title=title))
    return out


def reliability_png(diagrams: Mapping[str, ReliabilityDiagram], *, title: str) -> bytes:
    """The PNG bytes :func:`write_reliability_diagram` writes (also embedded in the
    validation report).

    Raises:
        ConfigError: no diagrams, or a diagram without any case.
    """
    if not diagrams:
        raise ConfigError("write_reliability_diagram needs at least one diagram")
    for label, diagram in diagrams.items():
        if int(np.sum(diagram.count)) == 0:
            raise ConfigError(f"reliability diagram {label!r} holds no cases")
    labels, shared = legend_labels(diagrams)
    figure = Figure(figsize=(6.0, 6.5), dpi=100, layout="constrained")
    top, bottom = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": (3, 1)})
    top.plot((0, 1), (0, 1), linestyle="--", color="0.5", linewidth=1, label="perfect calibration")
    for index, (diagram, label) in enumerate(zip(diagrams.values(), labels, strict=True)):
        colour = f"C{index}"
        filled = diagram.count > 0
        top.plot(
            diagram.confidence[filled], diagram.accuracy[filled], marker="o", color=colour,
            label=label,
        )  # fmt: skip
        bottom.stairs(diagram.count, diagram.edges, color=colour, fill=True, alpha=0.25)
        bottom.stairs(diagram.count, diagram.edges, color=colour, linewidth=1.5)
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy")
    top.grid(alpha=0.3)
    # Below the axes, not in them: where the points fall depends on the model.
    figure.legend(loc="outside lower center", fontsize="small", frameon=False)
    bottom.set(ylabel="cases per bin")
    bottom.set_xlabel("confidence (top-label probability)" + (f"; {shared}" if shared else ""))
    bottom.grid(alpha=0.3)
    figure.suptitle(title)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
