"""Every import the README and docs show a user still works."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
_BLOCK = re.compile(r"```python\n(.*?)```", re.S)


_IMPORT = re.compile(r"^\s*(?:from \S+ import \([^)]*\)|(?:from|import) [^\n(]+)$", re.M)


def _documented_imports() -> list[tuple[str, str, str | None]]:
    """(document, module, name or None) for each import in the documents' Python blocks.

    Only the import statements are parsed: the examples may use files that do not exist here.
    """
    found = []
    for doc in DOCS:
        for block in _BLOCK.findall(doc.read_text(encoding="utf-8")):
            statements = "\n".join(s.strip() for s in _IMPORT.findall(block))
            for node in ast.walk(ast.parse(statements)):
                if isinstance(node, ast.ImportFrom) and node.module:
                    found += [(doc.name, node.module, a.name) for a in node.names]
                elif isinstance(node, ast.Import):
                    found += [(doc.name, a.name, None) for a in node.names]
    return [f for f in found if f[1].split(".")[0] == "histoguard"]


IMPORTS = _documented_imports()


def test_the_documents_show_imports() -> None:
    assert len(IMPORTS) >= 5  # the extraction must see the examples, or the test below is empty


@pytest.mark.parametrize(("doc", "module", "name"), IMPORTS)
def test_documented_import_works(doc: str, module: str, name: str | None) -> None:
    imported = importlib.import_module(module)
    if name is not None:
        assert hasattr(imported, name), f"{doc}: `from {module} import {name}` no longer works"
