"""The ``demo`` command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from histoguard.cli._app import (
    Quiet,
    _print_report,
    app,
)
from histoguard.cli._bounds import writable_out_dir


@app.command()
def demo(
    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o", help="Output folder (must be writable).", callback=writable_out_dir
        ),
    ] = Path("histoguard-demo"),
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            help="Real-data folder laid out as the project's shared data (wsi/, "
            "tiles/lc25000_lung/, stain_refs/). Without it every stage runs on generated data.",
            exists=True,
            file_okay=False,
            dir_okay=True,
        ),
    ] = None,
    slides: Annotated[
        list[Path] | None,
        typer.Option("--slides", help="Use these slides instead of the default one (repeatable)."),
    ] = None,
    quiet: Quiet = False,
) -> None:
    """Run the whole current pipeline offline: tissue detection, tiling at 0.5 µm/px, features
    from the built-in hand-crafted encoder, an ABMIL model trained from slide labels with its
    predictions and heatmaps, and a robustness audit of the built-in CNN on a simulated
    two-center cohort.

    With --data DIR it uses the real CMU-1 sample slide and LC25000 lung tiles from DIR;
    without it, a generated pyramidal TIFF and generated tiles. The summary says what it ran
    on, what it trained and how to read its numbers.
    """
    from histoguard.demo._run import DEMO_ENCODER, run_demo

    result = run_demo(out, data=data, slides=slides or (), progress=not quiet)
    typer.echo("Tiling:")
    _print_report(result.report)
    typer.echo(f"Features ({DEMO_ENCODER}):")
    _print_report(result.features_report)
    for line in result.summary():
        typer.echo(line)
    for stem, paths in result.outputs().items():
        typer.echo(f"{stem}:")
        for kind, path in paths.items():
            typer.echo(f"  {kind:<10} {path}")
    if result.report.failed or result.features_report.failed:
        raise typer.Exit(code=1)
