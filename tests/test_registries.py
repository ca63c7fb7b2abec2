"""The contract every registry keeps: slide back-ends, encoders, MIL models, perturbations and
stain normalisation methods are one :class:`Registry` type each, full once their room is
imported, never importing their own entries, and spelled out in the CLI help from the registry.
"""

from __future__ import annotations

import ast
import dataclasses
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from histoguard.augment._registry import PERTURBATIONS
from histoguard.cli import app
from histoguard.cli._app import REGISTRY_PLACEHOLDERS
from histoguard.cli._docs import COMMANDS
from histoguard.core._registry import Registry
from histoguard.encoders import get_encoder_info
from histoguard.encoders._registry import ENCODERS
from histoguard.errors import UnknownEncoderError, UnknownNameError
from histoguard.mil import get_model_info
from histoguard.mil._registry import MODELS
from histoguard.robustness import get_perturbation
from histoguard.slide import SlideReader, get_backend, list_backends
from histoguard.slide._registry import BACKENDS
from histoguard.stain import STAIN_METHODS, stain_normalizer
from histoguard.stain._registry import STAIN_REGISTRY
from tests.conftest import REPO_ROOT

SRC = REPO_ROOT / "src"
runner = CliRunner()


def _lookup_stain(name: str) -> object:
    import numpy as np

    return stain_normalizer(name, np.full((8, 8, 3), 128, np.uint8))


@dataclass(frozen=True)
class Case:
    """One registry and how the rest of histoguard reaches it."""

    registry: Registry[Any]
    module: str  # where the registry lives
    lookup: Callable[[str], object]  # the room's public lookup by name
    error: type[UnknownNameError]
    #: what defines an entry (factory, class, function), hence the module it comes from
    definer: Callable[[Any], Any]
    #: the metadata listings, help and error messages need, all non-empty
    metadata: tuple[str, ...]
    #: a command whose help lists every name, and the placeholder it uses (None: no CLI option)
    help_command: str | None
    placeholder: str | None


CASES = {
    "slide back-end": Case(
        BACKENDS, "histoguard.slide._registry", get_backend, UnknownNameError,
        lambda info: info.reader, ("formats", "kinds"), "tile", "backends",
    ),
    "encoder": Case(
        ENCODERS, "histoguard.encoders._registry", get_encoder_info, UnknownEncoderError,
        lambda info: info.factory, ("description", "input_size"), "extract",
        "encoders",
    ),
    "MIL model": Case(
        MODELS, "histoguard.mil._registry", get_model_info, UnknownNameError,
        lambda info: info.cls, ("description", "citation"), "train", "mil_models",
    ),
    "perturbation": Case(
        PERTURBATIONS, "histoguard.augment._registry", get_perturbation,
        UnknownNameError, lambda info: info.function, ("unit", "levels", "description"),
        "extract", "perturbations",
    ),
    "stain normalisation": Case(
        STAIN_REGISTRY, "histoguard.stain._registry", _lookup_stain, UnknownNameError,
        lambda info: info.fit, ("description",), "extract", "stain_methods",
    ),
}  # fmt: skip

#: Modules that only import entry modules for their registrations.
AGGREGATORS = ("histoguard.encoders._builtin", "histoguard.encoders._adapters")


@pytest.fixture(params=list(CASES), ids=list(CASES))
def case(request: pytest.FixtureRequest) -> Case:
    return CASES[request.param]


def test_each_room_fills_its_registry_on_import(case: Case) -> None:
    assert isinstance(case.registry, Registry)
    assert case.registry.kind in CASES and CASES[case.registry.kind] is case
    assert len(case.registry) >= 2


def test_every_entry_has_the_metadata_listings_need(case: Case) -> None:
    for name in case.registry.names():
        entry = case.registry.get(name)
        assert entry.name == name
        for attribute in case.metadata:
            assert getattr(entry, attribute), f"{case.registry.kind} {name!r}: no {attribute}"


def test_an_unknown_name_raises_one_error_listing_the_names(case: Case) -> None:
    names = case.registry.names()
    typo = names[0] + "x"  # one character off a registered name
    with pytest.raises(case.error) as caught:
        case.lookup(typo)
    message = str(caught.value)
    assert message.startswith(f"unknown {case.registry.kind} {typo!r}")
    assert f"Did you mean {names[0]!r}?" in message
    assert message.endswith("Known: " + ", ".join(names))


def _imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in the file (functions included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _source(module: str) -> Path:
    return SRC / (module.replace(".", "/") + ".py")


def test_no_registry_imports_its_entries(case: Case) -> None:
    entry_modules = {case.definer(entry).__module__ for entry in case.registry.entries()}
    entry_modules.discard(case.module)  # none is defined in the registry module itself
    assert entry_modules, "entries should come from their own modules"
    imported = _imported_modules(_source(case.module))
    assert not imported & (entry_modules | set(AGGREGATORS))


def test_the_registry_type_imports_no_room() -> None:
    imported = _imported_modules(_source("histoguard.core._registry"))
    assert {m for m in imported if m.startswith("histoguard")} <= {
        "histoguard.errors",
        "histoguard.errors.ConfigError",
        "histoguard.errors.UnknownNameError",
    }


def _help_text(command: str) -> str:
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "120", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", result.output).split())


def _assert_lists(text: str, names: tuple[str, ...] | list[str]) -> None:
    for name in names:
        assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text), name


def test_cli_help_lists_every_registered_name(case: Case) -> None:
    if case.help_command is None:
        pytest.skip(f"no CLI option takes a {case.registry.kind} name")
    _assert_lists(_help_text(case.help_command), case.registry.names())


def test_cli_help_is_read_from_the_registry_not_written_out(
    case: Case, monkeypatch: pytest.MonkeyPatch
) -> None:
    if case.help_command is None:
        pytest.skip(f"no CLI option takes a {case.registry.kind} name")
    first = case.registry.entries()[0]
    extra = dataclasses.replace(first, name="zz-registered-in-a-test")
    monkeypatch.setitem(case.registry._entries, extra.name, extra)
    _assert_lists(_help_text(case.help_command), [extra.name])


@pytest.mark.parametrize("command", COMMANDS)
def test_no_command_help_shows_a_raw_placeholder(command: str) -> None:
    text = _help_text(command)
    for key in REGISTRY_PLACEHOLDERS:
        assert "{" + key + "}" not in text


def test_backends_are_listed_in_the_order_they_are_tried() -> None:
    order = [info.name for info in list_backends()]
    assert "Force a slide back-end: " + ", ".join(order) + "." in _help_text("tile")
    for info in list_backends():
        assert issubclass(info.reader, SlideReader) and info.reader.backend_name == info.name


def test_stain_method_names_are_case_insensitive() -> None:
    assert (
        STAIN_METHODS
        == STAIN_REGISTRY.names()
        == (
            "macenko",
            "macenko-torchstain",
            "reinhard",
            "vahadane",
        )
    )
    assert STAIN_REGISTRY.get("MaCenko") is STAIN_REGISTRY.get("macenko")


def test_building_the_cli_and_its_help_stays_light() -> None:
    """Registry names are read when help is shown, so starting a command imports no torch."""
    code = (
        "import sys; from typer.main import get_command; from histoguard.cli import app; "
        "get_command(app); print('torch' in sys.modules)"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert loaded.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("args", "closest"),
    [
        (["info", "x.svs", "--backend", "tifslide"], "tiffslide"),
        (["tile", "x.svs", "--out", "o", "--backend", "opneslide"], "openslide"),
        (
            ["extract", "x.svs", "--out", "o", "--encoder", "hg-cnn", "--stain-normalize",
             "macenk", "--stain-reference", "ref.png"],
            "macenko",
        ),
    ],
)  # fmt: skip
def test_an_unknown_name_on_the_command_line_is_a_usage_error(
    args: list[str], closest: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, args, env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 2, result.output
    assert f"Did you mean '{closest}'" in result.output
    assert "Traceback" not in result.output
