"""Checks every validation report must pass: each number on the page is in model_card.json,
the page's own text holds no other number, every embedded image decodes, the screenshot is
not blank."""

from __future__ import annotations

import base64
import io
import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from histoguard.report._report_page import resolve
from tests._browser import screenshot

_IGNORED = {"style", "title", "script"}


class _Page(HTMLParser):
    """Collects tagged spans (path, shown text), untagged visible text and image sources."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tagged: list[tuple[str, str, str]] = []  # (attribute, path, text)
        self.untagged: list[str] = []
        self.images: list[str] = []
        self._stack: list[tuple[str, str | None, str | None]] = []
        self._text: list[list[str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.images.append(dict(attrs).get("src") or "")
            return
        found = dict(attrs)
        kind = (
            "data-hg" if "data-hg" in found else "data-hg-key" if "data-hg-key" in found else None
        )
        self._stack.append((tag, kind, found.get(kind) if kind else None))
        self._text.append([])

    def handle_endtag(self, tag: str) -> None:
        if tag == "img" or not self._stack:
            return
        open_tag, kind, path = self._stack.pop()
        text = "".join(self._text.pop())
        if kind is not None and path is not None:
            self.tagged.append((kind, path, text))
        elif self._text:
            self._text[-1].append(text) if open_tag not in _IGNORED else None
        elif open_tag not in _IGNORED:
            self.untagged.append(text)

    def handle_data(self, data: str) -> None:
        if self._stack and any(tag in _IGNORED for tag, _, _ in self._stack):
            return
        if self._stack:
            # Text inside a tagged span belongs to it; elsewhere it is the page's own text.
            if any(kind for _, kind, _ in self._stack):
                self._text[-1].append(data)
            else:
                self.untagged.append(data)
        else:
            self.untagged.append(data)


def _same(shown: str, value: Any) -> bool:
    if value is None:
        return shown == "—"
    if isinstance(value, bool):
        return shown == ("yes" if value else "no")
    if isinstance(value, int | float):
        return math.isclose(float(shown), float(value), abs_tol=5e-4 + 1e-12)
    return shown == str(value)


def check_numbers(out: Path) -> dict[str, Any]:
    """Every tagged value on report.html resolves in model_card.json and shows that value; no
    digit appears in the page's untagged text. Returns the card."""
    card = json.loads((out / "model_card.json").read_text())
    page = _Page()
    page.feed((out / "report.html").read_text())
    assert len(page.tagged) > 50, "the page tags too few values"
    for kind, path, shown in page.tagged:
        if kind == "data-hg-key":
            parent, _, name = path.rpartition(".")
            assert name in resolve(card, parent), path
            assert shown == (name.replace("_", " ") or "(none)"), (path, shown)
        else:
            assert _same(shown, resolve(card, path)), (path, shown, resolve(card, path))
    # SHA-256 is the name of a hash, not a figure.
    stray = [t for t in page.untagged if re.search(r"\d", t.replace("SHA-256", ""))]
    assert not stray, f"numbers on the page that are not read from model_card.json: {stray[:5]}"
    return card


def check_images(out: Path) -> int:
    """Every <img> is an inline PNG that decodes and is not a blank canvas; returns the count."""
    page = _Page()
    page.feed((out / "report.html").read_text())
    assert page.images, "the report embeds no plot"
    for src in page.images:
        assert src.startswith("data:image/png;base64,"), src[:40]
        image = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        image.load()
        assert np.asarray(image.convert("L")).std() > 5, "an embedded plot is blank"
    return len(page.images)


def check_screenshot(out: Path, png: Path) -> Path:
    """Headless Chromium renders the page (plots included): the screenshot is not blank and
    has dark pixels (text, axes) over a large part of its height."""
    screenshot(out / "report.html", png)
    pixels = np.asarray(Image.open(png).convert("L"), dtype=np.float64)
    assert pixels.std() > 10, "the screenshot is blank"
    rows_with_ink = (pixels < 128).any(axis=1).mean()
    assert rows_with_ink > 0.3, f"only {rows_with_ink:.0%} of the screenshot's rows show anything"
    return png
