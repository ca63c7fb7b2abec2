"""Headless Chromium for the tests that look at pages: Debian's system browser (never a
downloaded one), for a screenshot of a file or driven by Playwright, and a uvicorn server on a
free loopback port in a thread. Tests skip with a reason where the browser is absent."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

#: Where Debian's ``chromium`` package puts the browser.
CHROMIUM = Path("/usr/bin/chromium")


def chromium_path() -> Path:
    """The system Chromium, or a skip saying how to get it."""
    found = CHROMIUM if CHROMIUM.is_file() else None
    if found is None:
        which = shutil.which("chromium") or shutil.which("chromium-browser")
        found = Path(which) if which else None
    if found is None:
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    return found


def screenshot(page: Path, png: Path, *, width: int = 1200, height: int = 3000) -> Path:
    """A ``width`` x ``height`` screenshot of the local HTML file ``page``, written to ``png``
    by headless Chromium; skips the test when it is not installed."""
    subprocess.run(
        [str(chromium_path()), "--headless", "--no-sandbox", "--disable-gpu",
         f"--screenshot={png}", f"--window-size={width},{height}", "--hide-scrollbars",
         page.resolve().as_uri()],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    assert png.is_file(), f"chromium wrote no screenshot of {page}"
    return png


@contextmanager
def browser_page(width: int = 1280, height: int = 800) -> Iterator[Any]:
    """A Playwright page in headless system Chromium (skips without playwright or chromium)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    executable = chromium_path()
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(executable), headless=True, args=["--no-sandbox"]
        )
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            yield page
        finally:
            browser.close()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serving(app: Any, port: int | None = None) -> Iterator[str]:
    """Run an ASGI app with uvicorn on loopback in a thread; yields its base URL."""
    import uvicorn

    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
