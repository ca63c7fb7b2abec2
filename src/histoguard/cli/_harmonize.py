"""The ``harmonize`` command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from histoguard.cli._app import SEED_MAX, OutDir, Quiet, _print_report, app


@app.command()
def harmonize(
    features: Annotated[
        Path, typer.Option(help="Folder of <slide_id>.h5 feature files.", show_default=False)
    ],
    cohort: Annotated[
        Path,
        typer.Option(
            help="Cohort table (CSV; .tsv for tabs): slide_id, center; optional split (the fit "
            "uses the 'train' rows, all rows without the column) and label (kept as a "
            "covariate of the training rows).",
            show_default=False,
        ),
    ],
    out: OutDir,
    method: Annotated[
        Literal["combat", "covbat"],
        typer.Option(
            help="combat: align each feature's per-center mean and variance; covbat: also "
            "align the covariance (ComBat on the top principal components)."
        ),
    ] = "combat",
    non_parametric: Annotated[
        bool, typer.Option("--non-parametric", help="Non-parametric empirical Bayes.")
    ] = False,
    apply: Annotated[
        Path | None,
        typer.Option(help="Apply the harmoniser saved in this folder instead of fitting one."),
    ] = None,
    label_free: Annotated[
        bool,
        typer.Option(
            "--label-free",
            help="Read no labels; fit each center the harmoniser does not know from its own "
            "slides (at least --min-slides). Can remove biology when that center's class mix "
            "differs: compare before and after.",
        ),
    ] = False,
    min_slides: Annotated[
        int, typer.Option(help="Fewest slides of a center fitted label-free.", min=1)
    ] = 20,
    max_tiles_per_slide: Annotated[
        int,
        typer.Option(help="Tiles per slide the fit reads at most (all are transformed).", min=1),
    ] = 256,
    no_covariates: Annotated[
        bool,
        typer.Option("--no-covariates", help="Fit without the training labels as covariates."),
    ] = False,
    seed: Annotated[
        int, typer.Option(help="Seeds the tile sample of the fit.", min=0, max=SEED_MAX)
    ] = 0,
    quiet: Quiet = False,
) -> None:
    """Remove center effects from feature files: OUT/<slide_id>.h5 per slide (same format,
    provenance kept, plus the harmoniser's method and SHA-256), OUT/harmonizer/ (the fitted
    harmoniser: JSON + safetensors) and OUT/harmonize_summary.csv.

    Fits on the cohort's training centers only; test slides are transformed with it. Features
    keep their units (the encoder's embedding space). Resumable: a rerun skips slides already
    written by the same harmoniser; a bad file fails only its slide (exit code 1). Compare
    before and after with `histoguard audit --compare FEATURES OUT --cohort TABLE`.
    """
    from histoguard.harmonize import HarmonizeConfig, harmonize_feature_files

    config = HarmonizeConfig(
        method=method,
        parametric=not non_parametric,
        max_tiles_per_slide=max_tiles_per_slide,
        covariates=not no_covariates,
        label_free=label_free,
        min_slides=min_slides,
        seed=seed,
    )
    report = harmonize_feature_files(
        features, cohort, out, config=config, apply=apply, progress=not quiet
    )
    for message in report.warnings:
        typer.echo(f"histoguard harmonize: warning: {message}", err=True)
    typer.echo(f"harmoniser: {report.harmonizer_dir} (sha256 {report.harmonizer_sha256[:12]})")
    _print_report(report.batch)
    if report.batch.failed:
        raise typer.Exit(code=1)
