"""Everything people look at: attention heatmaps, the tiling overview, the audit page.

This is the only room that draws. It reads results (or their JSON) and never runs a model."""

from histoguard.report._heatmaps import (
    PredictionHeatmaps,
    attention_geojson,
    attention_overlay,
    top_tiles_gallery,
    write_heatmaps,
    write_prediction_heatmaps,
)

__all__ = [
    "PredictionHeatmaps",
    "attention_geojson",
    "attention_overlay",
    "top_tiles_gallery",
    "write_heatmaps",
    "write_prediction_heatmaps",
]
