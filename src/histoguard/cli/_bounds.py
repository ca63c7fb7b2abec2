"""Checks of command-line values made before any work starts: writable output folders
(numeric bounds, NaN and inf included, are click ranges on the options).
Each raises ``typer.BadParameter`` (exit 2, no traceback) naming the fix."""

from __future__ import annotations

import os
from pathlib import Path

import typer


def writable_out_dir(value: Path | None) -> Path | None:
    """``value`` if it is, or can be made, a writable folder.

    Raises:
        typer.BadParameter: the path is a file, lies below a file, or its nearest existing
            folder is not writable.
    """
    if value is None:
        return None
    if value.exists() and not value.is_dir():
        raise typer.BadParameter(f"{value} is a file, not a folder; choose a folder path")
    existing = value
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise typer.BadParameter(
            f"{value} lies below the file {existing}; choose a path under a folder"
        )
    if existing.exists() and not os.access(existing, os.W_OK | os.X_OK):
        raise typer.BadParameter(
            f"{existing} is not writable; choose an output folder you can write to"
        )
    return value
