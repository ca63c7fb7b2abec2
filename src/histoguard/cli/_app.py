"""The ``histoguard`` app, the option types commands share, and the batch-report printer."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

if TYPE_CHECKING:
    from histoguard.core._batch import BatchReport

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
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
OutDir = Annotated[Path, typer.Option("--out", "-o", help="Output folder.")]
TargetMpp = Annotated[float, typer.Option(help="Target resolution of the tiles, µm/px.", min=0.0)]
TileSize = Annotated[int, typer.Option(help="Tile side in pixels at --mpp.", min=1)]
MinTissue = Annotated[
    float, typer.Option(help="Keep tiles whose tissue coverage is at least this.", min=0, max=1)
]
EdgeMode = Annotated[
    Literal["pad", "drop"],
    typer.Option(
        "--edge",
        help="Partial tiles at the right and bottom slide edges: pad (keep them, white beyond "
        "the slide, as CLAM and TRIDENT do) or drop (whole tiles only).",
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
