"""The ``histoguard`` command line. Each command is one call into the library."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from histoguard._batch import BatchReport

from histoguard._version import __version__

app = typer.Typer(
    name="histoguard",
    help="Whole-slide-image models that hold up across hospitals, and audits for any encoder.\n\n"
    "Coordinates are level-0 pixels; resolution is micrometres per pixel (mpp).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

MppOverride = Annotated[
    float | None,
    typer.Option(
        "--mpp-override",
        help="Micrometres per level-0 pixel, for slides whose metadata lacks it "
        "(typically 0.25 at 40x, 0.5 at 20x).",
        min=0.0,
    ),
]
Backend = Annotated[
    str | None,
    typer.Option(
        help="Force a slide back-end: openslide, tiffslide or image. "
        "Default: try them in that order."
    ),
]


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"histoguard {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version_callback, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """Whole-slide-image models that hold up across hospitals, and audits for any encoder."""


@app.command()
def tile(
    slides: Annotated[
        list[Path], typer.Argument(help="Slide files and/or folders of slides.", show_default=False)
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")],
    mpp: Annotated[
        float, typer.Option(help="Target resolution of the tiles, µm/px.", min=0.0)
    ] = 0.5,
    tile_size: Annotated[int, typer.Option(help="Tile side in pixels at --mpp.", min=1)] = 224,
    overlap: Annotated[
        int, typer.Option(help="Pixels (at --mpp) shared by neighbours.", min=0)
    ] = 0,
    min_tissue: Annotated[
        float, typer.Option(help="Keep tiles whose tissue coverage is at least this.", min=0, max=1)
    ] = 0.5,
    mpp_override: MppOverride = None,
    backend: Backend = None,
    threads: Annotated[int, typer.Option(help="Decoding threads per slide.", min=1)] = 2,
    thumbnail_size: Annotated[
        int, typer.Option(help="Longest side (px) of the tissue-detection thumbnail.", min=64)
    ] = 2048,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Detect tissue and tile slides into OUT/<slide>.h5 (coords + tile QC), with a thumbnail
    PNG showing the tissue outline and tile grid, and the tissue as QuPath GeoJSON.

    Resumable: slides whose verified output exists with the same settings are skipped. Failures
    are isolated per slide and listed in OUT/tiling_summary.csv; the exit code is 1 if any
    slide failed.
    """
    from histoguard.slide import TilingConfig, tile_slides

    try:
        config = TilingConfig(
            mpp=mpp,
            tile_size=tile_size,
            overlap=overlap,
            min_tissue_fraction=min_tissue,
            mpp_override=mpp_override,
            backend=backend,
            threads=threads,
            thumbnail_size=thumbnail_size,
        )
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error
    report = tile_slides(slides, out, config, show_progress=not quiet)
    _print_report(report)
    if report.failed:
        raise typer.Exit(code=1)


@app.command()
def info(
    slide: Annotated[Path, typer.Argument(help="A slide file.", show_default=False)],
    mpp_override: MppOverride = None,
    backend: Backend = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Show a slide's levels, resolution (mpp), vendor and associated images."""
    from histoguard._exceptions import SlideError
    from histoguard.slide import slide_info

    try:
        facts = slide_info(slide, backend=backend, mpp_override=mpp_override)
    except SlideError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=1) from error
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


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path(
        "histoguard-demo"
    ),
    slides: Annotated[
        list[Path] | None,
        typer.Option("--slides", help="Use these slides instead of the default one (repeatable)."),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Run the whole current pipeline offline (tissue detection and tiling at 0.5 µm/px).

    Uses the real CMU-1 sample slide from the shared data when present ($HISTOGUARD_TEST_DATA
    or ../shared/data), otherwise a generated pyramidal TIFF; says which one ran.
    """
    from histoguard._demo import run_demo

    result = run_demo(out, slides=slides or (), show_progress=not quiet)
    label = {
        "given": "the slides you gave",
        "real": "a real slide from the shared data",
        "generated": "a generated pyramidal TIFF (no real slide found)",
    }[result.source]
    typer.echo(f"Demo ran on {label}: {', '.join(str(s) for s in result.slides)}")
    _print_report(result.report)
    for stem, paths in result.outputs().items():
        typer.echo(f"{stem}:")
        for kind, path in paths.items():
            typer.echo(f"  {kind:<10} {path}")
    if result.report.failed:
        raise typer.Exit(code=1)


def _print_report(report: BatchReport) -> None:
    counts = report.counts()
    typer.echo(
        f"{counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed, "
        f"{counts['flagged']} flagged; summary: {report.summary_path}"
    )
    for result in report.results:
        if result.status == "failed":
            typer.echo(f"  FAILED  {result.message}", err=True)
        elif result.flagged:
            typer.echo(
                f"  FLAGGED {result.slide}: {result.n_unreadable} unreadable tiles left out; "
                f"first error: {result.message}",
                err=True,
            )


def main() -> None:
    """Console entry point."""
    app()
