"""Everything people look at: attention heatmaps, the tiling overview, the audit page.

This is the only room that draws. It reads results (or their JSON) and never runs a model.
"""

from typing import TYPE_CHECKING, Any

from histoguard.report._heatmaps import (
    PredictionHeatmaps,
    attention_geojson,
    attention_overlay,
    top_tiles_gallery,
    write_heatmaps,
    write_prediction_heatmaps,
)

if TYPE_CHECKING:
    from histoguard.report._audit_page import render_audit_html, write_audit_page

#: Names imported on first use: the audit page needs matplotlib and the robustness room, which
#: the heatmaps do not.
_LAZY = {
    "render_audit_html": "histoguard.report._audit_page",
    "write_audit_page": "histoguard.report._audit_page",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "PredictionHeatmaps",
    "attention_geojson",
    "attention_overlay",
    "render_audit_html",
    "top_tiles_gallery",
    "write_audit_page",
    "write_heatmaps",
    "write_prediction_heatmaps",
]
