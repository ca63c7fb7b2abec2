"""The command line: help everywhere, docs in sync, exit codes, JSON output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from histoguard.cli import app
from histoguard.cli._docs import COMMANDS, render_cli_reference
from tests.conftest import REPO_ROOT

runner = CliRunner()


@pytest.mark.parametrize("command", [[], *([c] for c in COMMANDS)])
def test_every_command_has_help(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0
    assert "Usage" in result.output


def test_every_command_is_documented() -> None:
    from typer.main import get_command

    assert set(get_command(app).commands) == set(COMMANDS)  # type: ignore[attr-defined]


def test_cli_reference_is_in_sync() -> None:
    committed = (REPO_ROOT / "docs" / "cli.md").read_text()
    assert committed == render_cli_reference(), "run `make docs` to regenerate docs/cli.md"


def test_tile_exit_code_reports_failures(known_slide: Path, tmp_path: Path) -> None:
    ok = runner.invoke(
        app, ["tile", str(known_slide), "--out", str(tmp_path), "-q", "--tile-size", "128"]
    )
    assert ok.exit_code == 0, ok.output
    assert "1 done, 0 skipped, 0 failed" in ok.output
    again = runner.invoke(
        app, ["tile", str(known_slide), "--out", str(tmp_path), "-q", "--tile-size", "128"]
    )
    assert "0 done, 1 skipped" in again.output
    bad = runner.invoke(app, ["tile", str(tmp_path / "nope.svs"), "--out", str(tmp_path), "-q"])
    assert bad.exit_code == 1
    assert "nope.svs" in bad.output


def test_tile_rejects_bad_settings(tmp_path: Path) -> None:
    result = runner.invoke(app, ["tile", "x.svs", "--out", str(tmp_path), "--backend", "nope"])
    assert result.exit_code == 2
    assert "openslide" in result.output


def test_info_json(known_slide: Path) -> None:
    result = runner.invoke(app, ["info", str(known_slide), "--json"])
    assert result.exit_code == 0, result.output
    facts = json.loads(result.output)
    assert facts["dimensions"] == [4096, 3072] and facts["mpp"] == pytest.approx(0.25)


def test_info_on_a_bad_file_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "t.svs").write_text("hello")
    result = runner.invoke(app, ["info", str(tmp_path / "t.svs")])
    assert result.exit_code == 1
    assert "t.svs" in result.output and "Traceback" not in result.output


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("histoguard ")


def test_encoders_json_lists_every_encoder_with_its_metadata() -> None:
    result = runner.invoke(app, ["encoders", "--json"])
    assert result.exit_code == 0, result.output
    entries = {entry["name"]: entry for entry in json.loads(result.output)}
    assert {"hg-cnn", "hg-d4", "hg-handcrafted", "uni", "onnx"} <= set(entries)
    assert entries["hg-d4"]["embed_dim"] == 128 and not entries["hg-d4"]["needs_weights"]
    assert entries["uni"]["needs_weights"] and entries["uni"]["embed_dim"] == 1024


def test_extract_refuses_a_pickle_without_consent(known_slide: Path, tmp_path: Path) -> None:
    import torch

    torch.save({"w": torch.zeros(1)}, tmp_path / "model.pt")
    args = [
        "extract",
        str(known_slide),
        "--encoder",
        "hg-cnn",
        "--weights",
        str(tmp_path / "model.pt"),
    ]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "out"), "-q"])
    assert result.exit_code == 1
    assert "--allow-pickle" in result.output
