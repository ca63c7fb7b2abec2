"""Only ``histoguard.report`` draws: slide I/O, MIL and the metrics import no drawing library."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "histoguard"
DRAWING = ("PIL.ImageDraw", "PIL.ImageFont", "matplotlib")


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth (lazy imports in functions included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _offenders(room: str, forbidden: tuple[str, ...]) -> list[str]:
    found = []
    for path in sorted((SRC / room).rglob("*.py")):
        for name in _imports(path):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                found.append(f"{path.relative_to(SRC)} imports {name}")
    return found


@pytest.mark.parametrize("room", ["slide", "mil", "robustness/metrics"])
def test_no_drawing_outside_report(room: str) -> None:
    assert _offenders(room, DRAWING) == []


@pytest.mark.parametrize("room", ["slide", "features"])
def test_slide_and_features_do_not_import_downstream_rooms(room: str) -> None:
    downstream = ("histoguard.report", "histoguard.mil", "histoguard.demo", "histoguard.cli")
    assert _offenders(room, downstream) == []


def test_the_checker_sees_lazy_imports(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from PIL import ImageDraw\n    import matplotlib.pyplot\n")
    assert {"PIL.ImageDraw", "matplotlib.pyplot"} <= _imports(module)
