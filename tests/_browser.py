"""Headless Chromium for the tests that look at pages (skipped with a reason without it)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest


def screenshot(page: Path, png: Path, *, width: int = 1200, height: int = 3000) -> Path:
    """A ``width`` x ``height`` screenshot of the local HTML file ``page``, written to ``png``
    by headless Chromium (Debian's ``chromium``); skips the test when it is not installed."""
    browser = shutil.which("chromium")
    if browser is None:
        pytest.skip("chromium is not installed (Debian package `chromium`)")
    subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={png}",
         f"--window-size={width},{height}", "--hide-scrollbars", page.resolve().as_uri()],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    assert png.is_file(), f"chromium wrote no screenshot of {page}"
    return png
