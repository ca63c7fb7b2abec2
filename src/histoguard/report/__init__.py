"""Everything people look at: attention heatmaps, the tiling overview, the audit page.

This is the only room that draws. It reads results (or their JSON) and never runs a model."""
