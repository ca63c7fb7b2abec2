"""The house rules of the source tree, checked statically.

- data flows one way: a room imports only from rooms upstream of it;
- no import circles, counting imports inside functions (a lazy import is still a circle);
- only ``report/`` draws;
- no module over 600 lines.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import histoguard

PACKAGE = Path(histoguard.__file__).parent

#: Rooms from upstream to downstream. A room may import itself and any room listed before it.
#: Rooms on the same line know nothing of each other.
ROOM_ORDER: tuple[frozenset[str], ...] = (
    frozenset({"_version", "errors"}),
    frozenset({"core"}),
    frozenset({"slide", "stain"}),
    frozenset({"augment"}),
    frozenset({"encoders"}),
    frozenset({"features"}),
    frozenset({"harmonize", "uncertainty"}),
    frozenset({"mil"}),
    frozenset({"robustness"}),
    frozenset({"report"}),
    frozenset({"serve"}),
    frozenset({"testing", "_tile_slides"}),
    frozenset({"demo"}),
    frozenset({"cli"}),
    frozenset({"__main__"}),
)

#: Rooms that may draw (PIL.ImageDraw, matplotlib).
DRAWING_ROOMS = frozenset({"report"})
DRAWING_MODULES = ("matplotlib", "PIL.ImageDraw", "PIL.ImageFont")

MAX_LINES = 600

_MODULE_NAMES: set[str] = set()  # filled below, once the tree is listed


def _modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        yield ".".join(parts), path


def _type_checking_lines(tree: ast.AST) -> set[int]:
    """Line numbers inside ``if TYPE_CHECKING:`` blocks (annotations only, never run)."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _imports(module: str, path: Path, *, runtime_only: bool = False) -> Iterator[tuple[str, int]]:
    """Every module ``module`` imports, anywhere in the file (inside functions too), with the
    line number. ``from pkg import submodule`` imports the submodule only: the package is
    already being imported. ``runtime_only`` leaves out ``if TYPE_CHECKING:`` blocks."""
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_lines(tree) if runtime_only else set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            submodules = [f"{target}.{a.name}" for a in node.names]
            known = [s for s in submodules if s in _MODULE_NAMES]
            if len(known) < len(submodules):  # names defined in ``target`` itself
                yield target, node.lineno
            for name in submodules:
                yield name, node.lineno


def _room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "histoguard" and len(parts) > 1 else None


def _rank(room: str) -> int:
    for rank, rooms in enumerate(ROOM_ORDER):
        if room in rooms:
            return rank
    raise AssertionError(f"room {room!r} is not in ROOM_ORDER; add it where it belongs")


MODULES = dict(_modules())
_MODULE_NAMES.update(MODULES)


def _internal_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for name, path in MODULES.items():
        for target, _ in _imports(name, path, runtime_only=True):
            if target in MODULES and target != name:
                graph[name].add(target)
    return graph


def test_every_room_is_ranked() -> None:
    rooms = {_room(name) for name in MODULES} - {None}
    for room in rooms:
        _rank(room)  # type: ignore[arg-type]


def test_rooms_import_only_upstream() -> None:
    wrong = []
    for name, path in MODULES.items():
        room = _room(name)
        if room is None:  # the package's __init__ re-exports the public API of every room
            continue
        for target, line in _imports(name, path):
            other = _room(target)
            if target not in MODULES or other is None or other == room:
                continue
            if _rank(other) >= _rank(room):
                wrong.append(f"{path.relative_to(PACKAGE)}:{line} ({room}) imports {target}")
    assert not wrong, "imports against the flow:\n" + "\n".join(wrong)


def test_no_import_circles() -> None:
    graph = _internal_graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def connect(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in graph:
        if node not in index:
            connect(node)
    assert not cycles, "import circles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_only_report_draws(name: str) -> None:
    if _room(name) in DRAWING_ROOMS:
        return
    drawing = [
        f"line {line}: {target}"
        for target, line in _imports(name, MODULES[name])
        if any(target == m or target.startswith(f"{m}.") for m in DRAWING_MODULES)
    ]
    assert not drawing, f"{name} draws; move the drawing to report/: {drawing}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_stay_small(name: str) -> None:
    n_lines = len(MODULES[name].read_text(encoding="utf-8").splitlines())
    assert n_lines <= MAX_LINES, f"{name} has {n_lines} lines; split it by concern"


def test_the_checks_can_fail(tmp_path: Path) -> None:
    """The import walker sees lazy, relative and from-imports (so the checks above can fail)."""
    source = tmp_path / "mod.py"
    source.write_text(
        "def f():\n    from histoguard.report import _heatmaps\n"
        "from . import sibling\nimport matplotlib.pyplot as plt\n"
    )
    found = {target for target, _ in _imports("histoguard.mil._x", source)}
    assert "histoguard.report._heatmaps" in found
    assert "histoguard.mil.sibling" in found
    assert "matplotlib.pyplot" in found
