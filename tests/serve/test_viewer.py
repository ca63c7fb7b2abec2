"""The viewer in a real browser (headless system Chromium): the slide renders, an overlay layer
changes the pixels when switched on, and clicking a tile shows its scores."""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from histoguard.serve import create_app
from tests._browser import browser_page, serving
from tests.conftest import REPO_ROOT
from tests.serve.conftest import Served

pytestmark = pytest.mark.integration

#: The docs' screenshot, written only when HISTOGUARD_WRITE_DOCS_IMAGES=1.
DOCS_IMAGE = REPO_ROOT / "docs" / "img" / "serve-viewer.png"

#: The slide's tiles are all loaded.
_LOADED = """() => {
  const world = window.hgViewer && window.hgViewer.world;
  return Boolean(world && world.getItemCount() >= 1 && world.getItemAt(0).getFullyLoaded());
}"""


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)


def test_viewer_renders_slide_overlay_and_tile_scores(served: Served, tmp_path: Path) -> None:
    app = create_app(served.config())
    with serving(app) as url, browser_page() as page:
        page.goto(url + "/")
        page.wait_for_selector("#slides li[data-slide='case1']")
        page.wait_for_function(_LOADED, timeout=20_000)
        view = page.locator("#view")
        plain = _pixels(view.screenshot())
        # The slide rendered: the tissue is darker than the empty glass around it.
        assert plain.mean() < 250 and plain.std() > 10
        decision = json.loads((served.predictions / "predictions.json").read_text())
        assert decision["slides"][0]["decision"] in page.inner_text(
            "#slides li[data-slide='case1']"
        )
        page.check("#layer-attention")
        page.wait_for_selector(".legend[data-layer='attention']")
        changed = 0.0
        deadline = time.monotonic() + 20
        while changed <= 0.05 and time.monotonic() < deadline:  # until the layer's tiles show
            time.sleep(0.25)
            shown = _pixels(view.screenshot())
            changed = float((np.abs(shown - plain).sum(axis=2) > 30).mean())
        assert changed > 0.05, "the attention overlay did not change the view"
        page.uncheck("#layer-attention")
        page.wait_for_function("() => window.hgViewer.world.getItemCount() === 1")
        page.check("#layer-attention")
        page.wait_for_selector(".legend[data-layer='attention']")
        assert "attention rank" in page.inner_text("#legends")
        # Click the middle of the tissue: a scored tile; its scores appear.
        box = view.bounding_box()
        assert box is not None
        page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.wait_for_function(
            "() => document.querySelector('#tile-info').innerText.includes('attention rank')",
            timeout=10_000,
        )
        info = page.inner_text("#tile-info")
        assert "predictive entropy" in info and "nats" in info
        page.wait_for_selector("#gallery figure img")
        if os.environ.get("HISTOGUARD_WRITE_DOCS_IMAGES") == "1":
            DOCS_IMAGE.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(tmp_path / "viewer.png"))
            image = Image.open(tmp_path / "viewer.png").convert("RGB")
            image.quantize(colors=128).save(DOCS_IMAGE, optimize=True)
