"""The ``report`` command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from histoguard.cli._app import app
from histoguard.cli._bounds import writable_out_dir


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A `histoguard train` output folder.")],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="Folder to write the report to (must be writable).",
            callback=writable_out_dir,
        ),
    ],
    audit: Annotated[
        Path | None, typer.Option(help="A `histoguard audit` output folder (its audit.json).")
    ] = None,
    intended_use: Annotated[
        Path | None,
        typer.Option(
            help="YAML with statement, users, population, exclusions: replaces the intended use "
            "derived from the run."
        ),
    ] = None,
    compare: Annotated[
        Path | None,
        typer.Option(
            help="The run of the other split design (k-fold vs leave-one-center-out) on the same "
            "cohort: adds the random-split vs site-aware gap."
        ),
    ] = None,
    evaluation: Annotated[
        Path | None,
        typer.Option(help="A `histoguard evaluate --ood` output: adds the gate's detection rate."),
    ] = None,
) -> None:
    """Write the validation report of a trained model: OUT/model_card.json (every number, in a
    versioned schema) and a self-contained OUT/report.html with intended use, data provenance,
    the leak check of the splits, per-center and per-class metrics with bootstrap intervals,
    calibration, conformal coverage, abstention, the out-of-distribution gate, the robustness
    audit, subgroups and a TRIPOD+AI / CAP checklist. Reads the run's files; runs no model."""
    from histoguard.report import write_report

    card, page = write_report(
        run_dir, out, audit_dir=audit, intended_use=intended_use, compare_run=compare,
        evaluation_dir=evaluation,
    )  # fmt: skip
    typer.echo(f"report: {page} (numbers in {card})")
