"""Everything people look at: attention and tile-uncertainty heatmaps, reliability diagrams,
the tiling overview, the audit page, the before / after comparison page, the validation
report (``model_card.json`` + ``report.html``) and the overlay layers the slide viewer
(``histoguard serve``) shows as map tiles.

This is the only room that draws. It reads results (or their JSON) and never runs a model.
"""

from typing import TYPE_CHECKING

from histoguard.core._lazy import lazy_attributes
from histoguard.report._heatmaps import (
    PredictionHeatmaps,
    attention_geojson,
    attention_overlay,
    top_tiles_gallery,
    uncertainty_overlay,
    write_heatmaps,
    write_prediction_heatmaps,
)
from histoguard.report._tile_layers import LAYER_NAMES, LayerStyle, layer_style, layer_tile

if TYPE_CHECKING:
    from histoguard.report._audit_page import render_audit_html, write_audit_page
    from histoguard.report._comparison_page import render_comparison_html, write_comparison_page
    from histoguard.report._model_card import ModelCard
    from histoguard.report._model_card_build import build_model_card
    from histoguard.report._reliability import write_reliability_diagram
    from histoguard.report._report_page import render_report_html, write_report

#: Names imported on first use: the audit page and the reliability diagram need matplotlib
#: (and the audit page the robustness room), which the heatmaps do not.
_LAZY = {
    "render_audit_html": "histoguard.report._audit_page",
    "write_audit_page": "histoguard.report._audit_page",
    "render_comparison_html": "histoguard.report._comparison_page",
    "write_comparison_page": "histoguard.report._comparison_page",
    "write_reliability_diagram": "histoguard.report._reliability",
    "ModelCard": "histoguard.report._model_card",
    "build_model_card": "histoguard.report._model_card_build",
    "render_report_html": "histoguard.report._report_page",
    "write_report": "histoguard.report._report_page",
}


__all__ = [
    "LAYER_NAMES",
    "LayerStyle",
    "ModelCard",
    "PredictionHeatmaps",
    "attention_geojson",
    "attention_overlay",
    "build_model_card",
    "layer_style",
    "layer_tile",
    "render_audit_html",
    "render_comparison_html",
    "render_report_html",
    "top_tiles_gallery",
    "uncertainty_overlay",
    "write_audit_page",
    "write_comparison_page",
    "write_heatmaps",
    "write_prediction_heatmaps",
    "write_reliability_diagram",
    "write_report",
]

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, __all__)
