"""The ``histoguard`` app, the option types commands share, the batch-report printer, and the
one place that turns errors into messages and exit codes.

Exit codes: 0 success; 1 a data or runtime problem (any other
:class:`~histoguard.errors.HistoguardError`, a file that cannot be read, a batch with failed
slides); 2 a usage or configuration mistake (click's usage errors,
:class:`~histoguard.errors.ConfigError`, :class:`~histoguard.errors.UnknownNameError`);
130 interrupted. Errors print as ``histoguard <command>: error: <message>`` on stderr, without a
traceback; any other exception is a bug and keeps its traceback.

Logging: ``histoguard -v`` sets the ``histoguard`` logger to INFO (``-vv``: DEBUG, and error
tracebacks are logged too), otherwise WARNING, with one handler on stderr. Library code only
logs; whether the ``histoguard`` logger is enabled for INFO is the verbose state other code may
consult (``logging.getLogger("histoguard").isEnabledFor(logging.INFO)``).

Option help that lists registered names (back-ends, encoders, MIL models, stain methods,
perturbations) holds a placeholder such as ``{encoders}``, filled from the registry by
:class:`RegistryHelpCommand` when the help is shown: the lists are never hard-coded, and
running a command does not import the rooms (torch) just to spell its help.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
import typer.core
from typer.core import TyperCommand

if TYPE_CHECKING:
    from histoguard.core._batch import BatchReport

from histoguard._version import __version__
from histoguard.cli._bounds import writable_out_dir
from histoguard.errors import ConfigError, HistoguardError, UnknownNameError

#: Largest ``--seed`` (NumPy and torch both accept every seed up to 2**32 - 1).
SEED_MAX = 2**32 - 1

#: Exit codes of ``histoguard``.
EXIT_DATA_ERROR = 1
EXIT_USAGE_ERROR = 2
EXIT_INTERRUPTED = 130

_log = logging.getLogger("histoguard")


class _ErrorMappingGroup(typer.core.TyperGroup):
    """The app's click group: runs the chosen command and maps the errors it raises to a
    message on stderr and an exit code (see the module docs). Lives on the group, not in
    :func:`main`, so that ``CliRunner().invoke(app, ...)`` behaves like the installed command.
    """

    # ``ctx`` is typer's vendored click context (typer._click, a private module): typed Any.
    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            _say(ctx, "interrupted")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except (ConfigError, UnknownNameError) as error:
            _say(ctx, str(error), error)
            raise typer.Exit(EXIT_USAGE_ERROR) from None
        except HistoguardError as error:
            _say(ctx, str(error), error)
            raise typer.Exit(EXIT_DATA_ERROR) from None
        except OSError as error:
            if error.filename is None and not isinstance(error, _PATH_ERRORS):
                raise  # not about a file the user named: a bug, keep the traceback
            if error.filename is None:
                message = str(error)
            else:
                message = f"{error.filename}: {error.strerror or error}; check the path"
            _say(ctx, message, error)
            raise typer.Exit(EXIT_DATA_ERROR) from None


#: Errors about a path even when they carry no ``filename`` (their message names it).
_PATH_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError,
                PermissionError)  # fmt: skip


def _say(ctx: Any, message: str, error: BaseException | None = None) -> None:
    command = ctx.invoked_subcommand
    prefix = f"{ctx.info_name or 'histoguard'}{f' {command}' if command else ''}"
    if error is not None:
        _log.debug("%s failed", prefix, exc_info=error)
    typer.echo(f"{prefix}: error: {message}", err=True)


class _StderrHandler(logging.StreamHandler[Any]):
    """A handler on whatever ``sys.stderr`` is when a record is emitted (test runners swap it,
    and a handler holding a closed stream would fail)."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def configure_logging(verbosity: int) -> None:
    """Set up the ``histoguard`` logger for the command line (library code never does).

    Args:
        verbosity: 0 for WARNING, 1 for INFO, 2 or more for DEBUG.
    """
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(max(verbosity, 0), 2)]
    _log.setLevel(level)
    for handler in [h for h in _log.handlers if isinstance(h, _StderrHandler)]:
        _log.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("histoguard: %(levelname)s: %(message)s"))
    _log.addHandler(handler)


app = typer.Typer(
    cls=_ErrorMappingGroup,
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
        max=1000.0,
    ),
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
OutDir = Annotated[
    Path,
    typer.Option(
        "--out", "-o", help="Output folder (must be writable).", callback=writable_out_dir
    ),
]
TargetMpp = Annotated[
    float,
    typer.Option(
        help="Target resolution of the tiles, µm/px.",
        min=0.0,
        max=1000.0,
    ),
]
TileSize = Annotated[int, typer.Option(help="Tile side in pixels at --mpp.", min=8, max=8192)]
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
    typer.Option(help="Force a slide back-end: {backends}. Default: try them in that order."),
]

Anonymize = Annotated[
    bool,
    typer.Option(
        "--anonymize",
        envvar="HISTOGUARD_ANONYMIZE",
        help="Name each slide in every output (file names, attributes, summaries, logs) by a "
        "salted hash, anon-<16 hex>, never by its path or file name; the id -> path mapping "
        "goes to --anonymize-map. Default from $HISTOGUARD_ANONYMIZE (1/true).",
    ),
]
AnonymizeSalt = Annotated[
    Path | None,
    typer.Option(
        "--anonymize-salt",
        help="Secret salt file for --anonymize, created (random, mode 0600) when absent. "
        "Default: $HISTOGUARD_ANON_SALT_FILE, else ~/.config/histoguard/anonymize.salt. "
        "Never inside --out.",
        show_default=False,
    ),
]
AnonymizeMap = Annotated[
    Path | None,
    typer.Option(
        "--anonymize-map",
        help="Mapping CSV (anon_id, slide_stem, slide_path) for --anonymize, mode 0600. "
        "Default: beside the salt file, <salt>.map.csv. Never inside --out.",
        show_default=False,
    ),
]


def anonymize_settings(anonymize: bool, salt: Path | None, mapping: Path | None) -> dict[str, Any]:
    """The :class:`~histoguard.slide.TilingConfig` fields of the three anonymize options.

    Raises:
        ConfigError: a salt or mapping file is given without --anonymize.
    """
    if not anonymize and (salt is not None or mapping is not None):
        raise ConfigError("--anonymize-salt and --anonymize-map need --anonymize")
    return {"anonymize": anonymize, "anonymize_salt": salt, "anonymize_map": mapping}


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
    from histoguard.augment._registry import PERTURBATIONS

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
    verbose: Annotated[
        int,
        typer.Option(
            "--verbose",
            "-v",
            count=True,
            help="Log what happens (-v: info, -vv: debug, with error tracebacks).",
        ),
    ] = 0,
) -> None:
    """Whole-slide-image models that hold up across hospitals, and audits for any encoder."""
    configure_logging(verbose)


def _print_report(report: BatchReport) -> None:
    counts = report.counts()
    locked = f", {counts['locked']} locked by another run" if counts["locked"] else ""
    typer.echo(
        f"{counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed, "
        f"{counts['flagged']} flagged{locked}; summary: {report.summary_path}"
    )
    for result in report.results:
        if result.status == "failed":
            typer.echo(f"  FAILED  {result.message}", err=True)
        elif result.status == "locked":
            typer.echo(f"  LOCKED  {result.message}", err=True)
        elif result.flagged:
            typer.echo(
                f"  FLAGGED {result.slide}: left out {result.n_unreadable} unreadable, "
                f"{result.n_constant} one-colour, {result.n_duplicate} duplicated tiles; "
                f"{result.message}",
                err=True,
            )
        if result.note:
            typer.echo(f"  NOTE    {result.slide.name}: {result.note}")


def main() -> None:
    """Console entry point: ``histoguard``; exit codes as in the module docs."""
    app(prog_name="histoguard")
