"""Every numeric option of every command carries bounds, and its ``--help`` shows them, so a
value out of range is refused (exit 2, with the range) before any work starts."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from histoguard.cli import app

#: Numeric options whose natural upper bound is the data (tiles, slides, neighbours) or the
#: machine (memory): a minimum only. Any other numeric option needs both bounds.
NO_MAXIMUM = {
    ("audit", "k"),
    ("audit", "max_k"),
    ("audit", "max_tiles_per_slide"),
    ("harmonize", "max_tiles_per_slide"),
    ("harmonize", "min_slides"),
    ("predict", "top_k"),
    ("serve", "cache_mb"),
    ("train", "max_instances"),
    ("train-encoder", "max_tiles"),
    ("train-end-to-end", "max_tiles_per_bag"),
    ("train-end-to-end", "tiles_with_grad"),
}

_HELP_ENV = {"COLUMNS": "250", "NO_COLOR": "1", "TERM": "dumb"}


def _numeric_params() -> Iterator[tuple[str, Any]]:
    """(command name, parameter) for every int or float parameter of the app and its
    commands (count flags such as ``-v`` excepted: click shows no range for them)."""
    root = typer.main.get_command(app)
    commands: list[tuple[str, Any]] = [("", root)]
    commands += sorted(root.commands.items())  # type: ignore[attr-defined]
    for name, command in commands:
        for param in command.params:
            if param.type_descriptor.annotation in (int, float) and not getattr(
                param, "count", False
            ):
                yield name, param


_PARAMS = list(_numeric_params())


def test_the_walk_finds_the_commands_options() -> None:
    found = {(name, param.name) for name, param in _PARAMS}
    assert {("tile", "tile_size"), ("train", "k"), ("serve", "port")} <= found
    assert len(found) > 50


@pytest.mark.parametrize(("command", "param"), _PARAMS, ids=[f"{c}:{p.name}" for c, p in _PARAMS])
def test_numeric_option_is_bounded(command: str, param: Any) -> None:
    assert param.min is not None, f"{command} --{param.name} has no minimum"
    if (command, param.name) not in NO_MAXIMUM:
        assert param.max is not None, f"{command} --{param.name} has no maximum"
    if param.default is not None:
        assert param.min <= param.default, f"{command} --{param.name}: default below the range"
        assert param.max is None or param.default <= param.max


def _help(command: str) -> str:
    result = CliRunner().invoke(app, [command, "--help"], env=_HELP_ENV)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("command", sorted({c for c, _ in _PARAMS if c}))
def test_help_shows_every_range(command: str) -> None:
    text = _help(command)
    for name, param in _PARAMS:
        if name != command:
            continue
        flag = param.opts[0]
        rows = [
            line
            for line in text.splitlines()
            if line.startswith("│") and line.lstrip("│ ").startswith(f"{flag} ")
        ]
        assert rows, f"{command} {flag} not in its --help"
        line = rows[0]
        shown = f"{param.min}<=x<={param.max}" if param.max is not None else f"x>={param.min}"
        assert shown in line, f"{command} {flag}: range {shown} not in {line!r}"


@pytest.mark.parametrize(
    ("args", "bound"),
    [
        (["serve", "--port", "0"], "greater than or equal to 1"),
        (["serve", "--port", "70000"], "65535"),
        (["train", "--k", "1"], "2"),
        (["train", "--threshold", "1.5"], "1"),
        (["train", "--weight-decay", "nan"], "0"),
        (["train-end-to-end", "--cohort", "c", "--tiles", "t", "--out", "o", "--epochs", "0"], "1"),
        (["extract", "x", "--encoder", "e", "--out", "o", "--views", "-1"], "0"),
    ],
)
def test_out_of_range_value_is_refused(args: list[str], bound: str) -> None:
    result = CliRunner().invoke(app, args)
    output = result.output + (result.stderr if result.stderr_bytes else "")
    assert result.exit_code == 2, output
    assert "Traceback" not in output
    assert bound in output
