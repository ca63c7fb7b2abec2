"""Slide commands: ``tile``, ``anonymize-table`` and ``info``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from histoguard.cli._app import (
    Anonymize,
    AnonymizeMap,
    AnonymizeSalt,
    Backend,
    EdgeMode,
    MinTissue,
    MppOverride,
    OutDir,
    Quiet,
    RegistryHelpCommand,
    TargetMpp,
    TileSize,
    _print_report,
    anonymize_settings,
    app,
)


@app.command(cls=RegistryHelpCommand)
def tile(
    slides: Annotated[
        list[Path], typer.Argument(help="Slide files and/or folders of slides.", show_default=False)
    ],
    out: OutDir,
    mpp: TargetMpp = 0.5,
    tile_size: TileSize = 224,
    overlap: Annotated[
        int,
        typer.Option(
            help="Pixels (at --mpp) shared by neighbours; less than --tile-size.",
            min=0,
            max=8191,
        ),
    ] = 0,
    min_tissue: MinTissue = 0.5,
    edge: EdgeMode = "pad",
    mpp_override: MppOverride = None,
    backend: Backend = None,
    threads: Annotated[int, typer.Option(help="Decoding threads per slide.", min=1, max=64)] = 2,
    thumbnail_size: Annotated[
        int,
        typer.Option(
            help="Longest side (px) of the tissue-detection thumbnail.", min=64, max=16384
        ),
    ] = 2048,
    anonymize: Anonymize = False,
    anonymize_salt: AnonymizeSalt = None,
    anonymize_map: AnonymizeMap = None,
    quiet: Quiet = False,
) -> None:
    """Detect tissue and tile slides into OUT/<slide>.h5 (coords + tile QC), with a thumbnail
    PNG showing the tissue outline and tile grid, and the tissue as QuPath GeoJSON.

    Resumable: slides whose verified output exists with the same settings are skipped. Failures
    are isolated per slide and listed in OUT/tiling_summary.csv; the exit code is 1 if any
    slide failed, or if the inputs hold no slide at all. With --anonymize, every output names
    a slide by its anon id only (OUT/<anon id>.h5 ...).
    """
    from histoguard import tile_slides
    from histoguard.slide import TilingConfig

    config = TilingConfig(
        mpp=mpp,
        tile_size=tile_size,
        overlap=overlap,
        min_tissue_fraction=min_tissue,
        mpp_override=mpp_override,
        backend=backend,
        threads=threads,
        thumbnail_size=thumbnail_size,
        edge=edge,
        **anonymize_settings(anonymize, anonymize_salt, anonymize_map),
    )
    report = tile_slides(slides, out, config, progress=not quiet)
    _print_report(report)
    if report.failed:
        raise typer.Exit(code=1)


@app.command("anonymize-table")
def anonymize_table(
    table: Annotated[
        Path,
        typer.Argument(
            help="Cohort or centers table (CSV/TSV) naming slides by file stem.", show_default=False
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="The translated table.", show_default=False)
    ],
    anonymize_salt: Annotated[
        Path | None,
        typer.Option(
            "--anonymize-salt",
            "--salt",
            help="The salt file of the --anonymize runs (never created here). Default: "
            "$HISTOGUARD_ANON_SALT_FILE, else ~/.config/histoguard/anonymize.salt.",
            show_default=False,
        ),
    ] = None,
    column: Annotated[
        list[str] | None,
        typer.Option(
            help="A column to translate (repeatable). Default: slide_id, and patient_id when "
            "the table has one."
        ),
    ] = None,
) -> None:
    """Translate a table's slide and patient ids to the anon ids of --anonymize outputs.

    The translated cohort joins the anonymised feature files (`train --cohort`, `predict
    --centers`); other columns are copied. Needs the salt of the --anonymize runs."""
    from histoguard.core._privacy import IDENTIFYING_COLUMNS, Anonymizer
    from histoguard.core._privacy import anonymize_table as translate

    anonymizer = Anonymizer.load(anonymize_salt, create=False)
    n_rows = translate(table, out, anonymizer.salt, column or IDENTIFYING_COLUMNS)
    typer.echo(f"anonymised: {n_rows} rows to {out}")


@app.command(cls=RegistryHelpCommand)
def info(
    slide: Annotated[Path, typer.Argument(help="A slide file.", show_default=False)],
    mpp_override: MppOverride = None,
    backend: Backend = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Show a slide's levels, resolution (mpp), vendor and associated images."""
    from histoguard.slide import slide_info

    facts = slide_info(slide, backend=backend, mpp_override=mpp_override)
    if as_json:
        typer.echo(json.dumps(facts, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(show_header=False, box=None)
    for key, value in facts.items():
        if key == "mpp" and value is None:
            value = "[red]unknown: pass --mpp-override[/red]"
        table.add_row(f"[bold]{key}[/bold]", str(value))
    Console().print(table)
