"""Built-in encoders (placeholder until they land)."""
