"""Reliability diagrams: a PNG per set of diagrams, each line in its colour, ECE in the legend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import to_rgb
from PIL import Image

from histoguard.errors import ConfigError
from histoguard.report import write_reliability_diagram
from histoguard.report._reliability import legend_labels
from histoguard.uncertainty import Calibrator, ReliabilityDiagram, reliability_diagram


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _before_and_after() -> tuple[ReliabilityDiagram, ReliabilityDiagram]:
    """An over-confident three-class model on 300 cases, before and after temperature scaling
    fitted on 300 others."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=600)
    logits = 3.0 * (rng.normal(size=(600, 3)) + 1.5 * np.eye(3)[labels])
    calibrator = Calibrator.fit(logits[:300], labels[:300])
    before = reliability_diagram(_softmax(logits[300:]), labels[300:])
    after = reliability_diagram(calibrator.transform(logits[300:]), labels[300:])
    return before, after


def _pixels_of(image: np.ndarray, colour: str) -> int:
    rgb = np.round(np.asarray(to_rgb(colour)) * 255).astype(int)
    return int((np.abs(image[..., :3].astype(int) - rgb).max(axis=2) <= 2).sum())


def test_writes_a_png_with_one_line_per_diagram(tmp_path: Path) -> None:
    before, after = _before_and_after()
    assert before.ece > after.ece  # the fixture is what its docstring says
    path = write_reliability_diagram(
        {"before scaling": before, "after scaling": after}, tmp_path / "out" / "reliability.png",
        title="temperature scaling",
    )  # fmt: skip
    assert path == tmp_path / "out" / "reliability.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # atomic
    with Image.open(path) as image:
        assert image.size == (600, 650)
        both = np.asarray(image.convert("RGB"))
    # Each diagram has its colour, with markers, a line and a histogram: hundreds of pixels.
    assert _pixels_of(both, "C0") > 200 and _pixels_of(both, "C1") > 200
    one = write_reliability_diagram({"after scaling": after}, tmp_path / "one.png", title="t")
    with Image.open(one) as image:
        alone = np.asarray(image.convert("RGB"))
    assert _pixels_of(alone, "C0") > 200 and _pixels_of(alone, "C1") == 0


def test_legend_gives_each_ece_and_the_binning_once() -> None:
    before, after = _before_and_after()
    labels, shared = legend_labels({"before scaling": before, "after scaling": after})
    assert labels == [
        f"before scaling (ECE {before.ece:.3f})",
        f"after scaling (ECE {after.ece:.3f})",
    ]
    assert shared == "15 equal-width bins"
    rng = np.random.default_rng(1)
    probabilities = rng.dirichlet(np.ones(3), size=200)
    mass = reliability_diagram(probabilities, rng.integers(0, 3, 200), n_bins=10, strategy="mass")
    labels, shared = legend_labels({"width": after, "mass": mass})
    assert shared is None
    assert labels[1] == f"mass, 10 equal-mass bins (ECE {mass.ece:.3f})"


def test_refuses_nothing_to_draw(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least one"):
        write_reliability_diagram({}, tmp_path / "r.png", title="t")
    empty = ReliabilityDiagram(
        strategy="width", edges=np.linspace(0, 1, 3), confidence=np.full(2, np.nan),
        accuracy=np.full(2, np.nan), count=np.zeros(2, dtype=np.int64),
    )  # fmt: skip
    with pytest.raises(ConfigError, match="no cases"):
        write_reliability_diagram({"empty": empty}, tmp_path / "r.png", title="t")
    assert not (tmp_path / "r.png").exists()
