"""Importing histoguard or any of its rooms loads no heavy library: they load on first use.

Each room is imported in a fresh interpreter run with ``-X importtime``; after each import the
test records which heavy modules appeared in ``sys.modules``, and the import-time tree names
the histoguard module that pulled one in. No timing is asserted (docs/benchmarks.md records the
CPU seconds); what is kept is the cause: scipy.stats, scikit-image, scikit-learn, matplotlib
and the like took 1 to 5 s of CPU at import before they were made lazy.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import pytest

#: Libraries no room may import at import time (each costs 0.2 to 1.5 s of CPU to import).
HEAVY = (
    "dask",
    "h5py",
    "matplotlib",
    "openslide",
    "pandas",
    "rich",
    "scipy",
    "skimage",
    "sklearn",
    "tifffile",
    "tiffslide",
    "timm",
    "transformers",
)

#: Rooms that define torch modules at import (models, encoders) or import those that do.
TORCH_ROOMS = (
    "histoguard.encoders",
    "histoguard.mil",
    "histoguard.robustness",
)

#: The other rooms do not import torch either.
TORCH_FREE_ROOMS = (
    "histoguard",
    "histoguard.errors",
    "histoguard.core",
    "histoguard.slide",
    "histoguard.stain",
    "histoguard.augment",
    "histoguard.features",
    "histoguard.harmonize",
    "histoguard.uncertainty",
    "histoguard.report",
    "histoguard.serve",
    "histoguard.testing",
    "histoguard.demo",
    "histoguard.cli",
)

# Imports the rooms one after another and prints, per room, the heavy modules it added. One
# process per group is enough: sys.modules only grows, so a module a room loads alone is also
# loaded when it comes after others, unless an earlier room loaded it (and was blamed for it).
_PROBE = """
import importlib, json, sys
rooms, heavy = sys.argv[1].split(","), sys.argv[2].split(",")
def loaded():
    return {name for name in heavy if name in sys.modules}
found = {}
for room in rooms:
    before = loaded()
    importlib.import_module(room)
    found[room] = sorted(loaded() - before)
print(json.dumps(found))
"""


def _who_imported(importtime: str, module: str) -> str:
    """The innermost histoguard module above the first import of ``module`` in a ``-X importtime``
    tree (children are printed before their parents, indented two spaces per level)."""
    rows = []
    for line in importtime.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            name = line.split("|")[2]
            rows.append((len(name) - len(name.lstrip()), name.strip()))
    for i, (depth, name) in enumerate(rows):
        if name == module or name.startswith(module + "."):
            for parent_depth, parent in rows[i + 1 :]:
                if parent_depth < depth and parent.startswith("histoguard"):
                    return parent
                depth = min(depth, parent_depth)
    return "?"


def _probe(rooms: tuple[str, ...], heavy: tuple[str, ...]) -> tuple[dict[str, list[str]], str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    run = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", _PROBE, ",".join(rooms), ",".join(heavy)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    found: dict[str, list[str]] = json.loads(run.stdout)
    return found, run.stderr


@pytest.mark.parametrize(
    ("rooms", "heavy"),
    [(TORCH_FREE_ROOMS, (*HEAVY, "torch")), (TORCH_ROOMS, HEAVY)],
    ids=["torch-free rooms", "torch rooms"],
)
def test_rooms_import_no_heavy_library(rooms: tuple[str, ...], heavy: tuple[str, ...]) -> None:
    found, importtime = _probe(rooms, heavy)
    assert list(found) == list(rooms)
    culprits = {
        room: {module: _who_imported(importtime, module) for module in modules}
        for room, modules in found.items()
        if modules
    }
    assert not culprits, f"heavy imports at import time (room: {{module: imported by}}): {culprits}"


def test_the_probe_sees_a_heavy_import() -> None:
    """The probe itself works: a module that does import scipy is caught and blamed."""
    found, importtime = _probe(("histoguard", "scipy.ndimage"), ("scipy", "torch"))
    assert found == {"histoguard": [], "scipy.ndimage": ["scipy"]}
    assert _who_imported(importtime, "scipy") == "?"  # scipy.ndimage is not a histoguard module


def test_blame_names_the_innermost_histoguard_module() -> None:
    tree = "\n".join(
        [
            "import time: self [us] | cumulative | imported package",
            "import time:       10 |         10 |       scipy._lib",
            "import time:       20 |         30 |     scipy",
            "import time:        5 |          5 |     histoguard.errors",
            "import time:       30 |         65 |   histoguard.slide._tissue",
            "import time:       40 |        105 | histoguard",
        ]
    )
    assert _who_imported(tree, "scipy") == "histoguard.slide._tissue"
    assert _who_imported(tree, "histoguard.errors") == "histoguard.slide._tissue"
    assert _who_imported(tree, "torch") == "?"


@pytest.mark.parametrize("room", [*TORCH_FREE_ROOMS, *TORCH_ROOMS])
def test_lazy_names_are_listed_by_dir(room: str) -> None:
    """Names a room imports on first use are in its ``__all__`` and in ``dir()`` alike."""
    module = importlib.import_module(room)
    assert set(getattr(module, "__all__", ())) <= set(dir(module))
