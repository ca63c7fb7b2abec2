"""The executor seam: imports go one way (no circle), and Dask's own log lines stay hidden."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

FEATURES = Path(__file__).resolve().parents[2] / "src" / "histoguard" / "features"


def _imported_features_modules(path: Path) -> set[str]:
    """The ``histoguard.features._x`` modules a file imports, lazy imports included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module.startswith("histoguard.features."):
                found.add(node.module.rsplit(".", 1)[1])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("histoguard.features."):
                    found.add(alias.name.rsplit(".", 1)[1])
    return found


def test_feature_modules_import_one_way_only() -> None:
    graph = {p.stem: _imported_features_modules(p) for p in FEATURES.glob("_*.py")}
    assert {"_run", "_local", "_dask", "_extract"} <= graph.keys()

    def reachable(start: str) -> set[str]:
        seen: set[str] = set()
        todo = list(graph[start])
        while todo:
            module = todo.pop()
            if module not in seen:
                seen.add(module)
                todo.extend(graph.get(module, ()))
        return seen

    circles = [module for module in graph if module in reachable(module)]
    assert circles == [], f"import circle through {circles}: {graph}"
    # The per-slide job knows no executor; only _run chooses one.
    assert reachable("_extract").isdisjoint({"_run", "_local", "_dask"})


@pytest.fixture
def histoguard_level():  # type: ignore[no-untyped-def]
    logger = logging.getLogger("histoguard")
    saved = logger.level
    yield logger
    logger.setLevel(saved)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_dask_warnings_are_hidden_unless_histoguard_is_verbose(
    histoguard_level: logging.Logger,
) -> None:
    pytest.importorskip("distributed")
    from histoguard.features._dask import quiet_dask_logs

    records = _Records()
    dask_logger = logging.getLogger("distributed")
    dask_logger.addHandler(records)
    nanny = logging.getLogger("distributed.nanny")
    try:
        histoguard_level.setLevel(logging.WARNING)  # the default
        with quiet_dask_logs() as level:
            nanny.warning("Worker process still alive after 4.0 seconds, killing")
        assert level == logging.ERROR
        assert records.messages == []
        nanny.warning("outside the block")  # levels are restored afterwards
        assert records.messages == ["outside the block"]

        histoguard_level.setLevel(logging.INFO)  # what `histoguard --verbose` does
        with quiet_dask_logs() as level:
            nanny.warning("Worker process still alive after 4.0 seconds, killing")
        assert level == logging.WARNING
        assert records.messages[-1].startswith("Worker process still alive")
    finally:
        dask_logger.removeHandler(records)


@pytest.mark.slow
@pytest.mark.integration
def test_a_local_cluster_run_prints_no_dask_lines(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from histoguard.features import ExtractionConfig, extract_features

    folder = tmp_path / "p1"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):  # not one colour: a blank tile is refused
        tile = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(tile).save(folder / f"t{i}.png")
    config = ExtractionConfig(encoder="hg-handcrafted", readers=0)
    report = extract_features([folder], tmp_path / "out", config, dask_workers=1)
    assert [r.status for r in report.results] == ["done"]
    err = capfd.readouterr().err
    assert "distributed." not in err, err
