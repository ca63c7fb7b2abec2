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


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path(
        "histoguard-demo"
    ),
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

    Uses the real CMU-1 sample slide from the shared data when present ($HISTOGUARD_TEST_DATA
    or ../shared/data), otherwise a generated pyramidal TIFF; says which one ran.
    """
    from histoguard.demo._run import DEMO_ENCODER, run_demo

    result = run_demo(out, slides=slides or (), progress=not quiet)
    label = {
        "given": "the slides you gave",
        "real": "a real slide from the shared data",
        "generated": "a generated pyramidal TIFF (no real slide found)",
    }[result.source]
    typer.echo(f"Demo ran on {label}: {', '.join(str(s) for s in result.slides)}")
    typer.echo("Tiling:")
    _print_report(result.report)
    typer.echo(f"Features ({DEMO_ENCODER}):")
    _print_report(result.features_report)
    from histoguard.mil import format_table

    tiles = {"real": "real LC25000 lung tiles", "generated": "generated tiles"}
    typer.echo(
        f"Model: ABMIL, 3-fold patient-grouped cross-validation on pseudo-slides of "
        f"{tiles[result.training_source]} (tumour vs normal):"
    )
    typer.echo(format_table(result.training_report))
    for prediction in result.predictions:
        probabilities = " ".join(f"{k}={v:.3f}" for k, v in prediction.probabilities.items())
        typer.echo(
            f"Prediction for {prediction.slide}: {prediction.predicted} ({probabilities}); "
            "a lung model on this slide shows the mechanics, not a diagnosis"
        )
    audit = result.audit.audit
    ri = audit["robustness_index"]
    typer.echo(
        f"Audit of {audit['metadata']['subject']}: robustness index "
        + (f"{ri['value']:.2f} (1 = biology only, 0 = center only)" if "value" in ri else "skipped")
        + f"; report: {result.audit.html_path}"
    )
    for stem, paths in result.outputs().items():
        typer.echo(f"{stem}:")
        for kind, path in paths.items():
            typer.echo(f"  {kind:<10} {path}")
    if result.report.failed or result.features_report.failed:
        raise typer.Exit(code=1)
