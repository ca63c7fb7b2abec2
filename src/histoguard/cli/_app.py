"""The ``histoguard`` app, the option types commands share, and the batch-report printer.

Option help that lists registered names (back-ends, encoders, MIL models, stain methods,
perturbations) holds a placeholder such as ``{encoders}``, filled from the registry by
:class:`RegistryHelpCommand` when the help is shown: the lists are never hard-coded, and
running a command does not import the rooms (torch) just to spell its help.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperCommand

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
Backend = Annotated[
    str | None,
    typer.Option(help="Force a slide back-end: {backends}. Default: try them in that order."),
]


def _backend_names() -> list[str]:
    from histoguard.slide import list_backends

    return [info.name for info in list_backends()]  # in the order they are tried


def _encoder_names() -> tuple[str, ...]:
    from histoguard.encoders._registry import ENCODERS

    return ENCODERS.names()


def _mil_model_names() -> tuple[str, ...]:
    from histoguard.mil._registry import MODELS

    return MODELS.names()


def _stain_method_names() -> tuple[str, ...]:
    from histoguard.stain._registry import STAIN_REGISTRY

    return STAIN_REGISTRY.names()


def _perturbation_names() -> tuple[str, ...]:
    from histoguard.robustness.shifts._registry import PERTURBATIONS

    return PERTURBATIONS.names()


#: Placeholders option help may hold (``{backends}``, ...), each with the registry names it
#: stands for, read when the help is shown.
REGISTRY_PLACEHOLDERS: dict[str, Callable[[], Sequence[str]]] = {
    "backends": _backend_names,
    "encoders": _encoder_names,
    "mil_models": _mil_model_names,
    "perturbations": _perturbation_names,
    "stain_methods": _stain_method_names,
}


def fill_registry_names(text: str) -> str:
    """``text`` with every registry placeholder (``{encoders}``, ...) replaced by the names."""
    for key, names in REGISTRY_PLACEHOLDERS.items():
        if "{" + key + "}" in text:
            text = text.replace("{" + key + "}", ", ".join(names()))
    return text


class RegistryHelpCommand(TyperCommand):
    """A command whose option help lists registry names, filled in when the help is shown."""

    # Any: typer vendors its own click, whose Context and HelpFormatter are private names.
    def format_help(self, ctx: Any, formatter: Any) -> None:
        for param in self.params:
            text = getattr(param, "help", None)
            if isinstance(text, str) and "{" in text:
                param.help = fill_registry_names(text)  # type: ignore[attr-defined]
        super().format_help(ctx, formatter)


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
