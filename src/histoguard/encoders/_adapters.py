"""Adapters for encoders users bring (placeholder until they land)."""
