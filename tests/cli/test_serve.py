"""``histoguard serve``: one library call; mistakes are one line, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

import histoguard.serve
from histoguard.cli import app


def test_missing_folder_is_one_line_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["serve", str(tmp_path / "missing")])
    assert result.exit_code == 2
    assert "does not exist" in result.output and "Traceback" not in result.output


def test_serve_is_one_library_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    monkeypatch.setattr(histoguard.serve, "serve", seen.append)
    result = CliRunner().invoke(
        app, ["serve", str(tmp_path), "--port", "8123", "--workers", "3", "--cache-mb", "0"]
    )
    assert result.exit_code == 0, result.output
    (config,) = seen
    assert config.slide_dirs == (tmp_path,) and config.port == 8123
    assert (config.workers, config.tile_cache_mb, config.host) == (3, 0, "127.0.0.1")
