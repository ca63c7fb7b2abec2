"""Render the CLI reference (docs/cli.md) from the commands' own ``--help``.

Run ``python -m histoguard.cli._docs > docs/cli.md`` (``make docs``); a test fails when the file
is out of date.
"""

from __future__ import annotations

from typer.testing import CliRunner

from histoguard.cli import app

#: Commands documented, in order.
COMMANDS = (
    "tile",
    "extract",
    "anonymize-table",
    "train-encoder",
    "harmonize",
    "train",
    "train-end-to-end",
    "predict",
    "evaluate",
    "compare",
    "audit",
    "report",
    "serve",
    "encoders",
    "info",
    "demo",
)

#: Fixed terminal settings so the rendering is the same on every machine.
_HELP_ENV = {"COLUMNS": "100", "NO_COLOR": "1", "TERM": "dumb"}

_HEADER = """# CLI reference

Generated from the commands' own `--help` by `python -m histoguard.cli._docs > docs/cli.md`
(`make docs`); a test keeps it in sync. Every command is one call into the Python library:
`tile` is `histoguard.tile_slides`, `extract` is `histoguard.features.extract_features`,
`train-encoder` is `histoguard.encoders.train_encoder` (on tiles read by
`histoguard.robustness.load_class_folders` / `load_tile_table`),
`harmonize` is `histoguard.harmonize.harmonize_feature_files`,
`train` is `histoguard.mil.train`, `train-end-to-end` is
`histoguard.mil.train_end_to_end`, `predict` is `histoguard.mil.predict`, `compare` is
`histoguard.mil.compare_designs`, `report` is `histoguard.report.write_report`,
`serve` is `histoguard.serve.serve`,
`encoders` is `histoguard.encoders.list_encoders`, `info` is `histoguard.slide.slide_info`,
`demo` is `histoguard.demo._run.run_demo`.
"""


def _help(args: list[str]) -> str:
    result = CliRunner().invoke(app, [*args, "--help"], env=_HELP_ENV, prog_name="histoguard")
    if result.exit_code != 0:
        raise RuntimeError(f"histoguard {' '.join(args)} --help failed: {result.output}")
    return "\n".join(line.rstrip() for line in result.output.strip().splitlines())


def render_cli_reference() -> str:
    """The markdown reference of ``histoguard`` and each of its commands."""
    parts = [_HEADER, "## `histoguard`\n", f"```\n{_help([])}\n```\n"]
    for command in COMMANDS:
        parts += [f"## `histoguard {command}`\n", f"```\n{_help([command])}\n```\n"]
    return "\n".join(parts)


if __name__ == "__main__":
    print(render_cli_reference(), end="")
