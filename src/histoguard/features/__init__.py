"""Feature extraction: tiles through an encoder into per-slide feature files."""
