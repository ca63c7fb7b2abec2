"""A served folder: a generated slide with known tissue, its feature file, a tiny calibrated
model, and the files ``histoguard predict`` writes for it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from histoguard.features import write_feature_file
from histoguard.mil import build_model, fit_trust, predict, save_model, save_trust
from histoguard.report import write_prediction_heatmaps
from histoguard.serve import ServeConfig
from histoguard.slide import Rectangle, write_synthetic_slide
from histoguard.uncertainty import slide_embedding

#: Tissue of the served slide, level-0 pixels; the scored tiles cover it on a 256-px grid.
TISSUE = Rectangle(x0=512, y0=512, x1=2560, y1=2048)
TILE0 = 256
IN_DIM = 8
PROVENANCE = {"encoder": "hg-test", "weights_sha256": "ab" * 32, "mpp": 0.5, "tile_size": 128}


@dataclass(frozen=True)
class Served:
    """The folders of a served set-up."""

    slides: Path
    features: Path
    models: Path
    predictions: Path
    slide_id: str
    coords: np.ndarray

    def config(self, **overrides: object) -> ServeConfig:
        settings: dict[str, object] = {
            "slide_dirs": (self.slides,), "models_dir": self.models,
            "features_dir": self.features, "predictions_dir": self.predictions,
            "workers": 2,
        }  # fmt: skip
        settings.update(overrides)
        return ServeConfig(**settings)  # type: ignore[arg-type]


def tissue_coords() -> np.ndarray:
    xs = np.arange(TISSUE.x0, TISSUE.x1, TILE0)
    ys = np.arange(TISSUE.y0, TISSUE.y1, TILE0)
    return np.array([(x, y) for y in ys for x in xs], dtype=np.int64)


def _tiny_model(folder: Path, rng: np.random.Generator) -> Path:
    """An attention-MIL model on 8-d features with a trust fitted on 40 random slides."""
    torch.manual_seed(0)
    model = build_model("abmil", in_dim=IN_DIM, n_classes=2)
    save_model(model, folder, labels=["normal", "tumour"], provenance=PROVENANCE)
    labels = np.arange(40) % 2
    logits = np.where(np.eye(2)[labels] > 0, 3.0, -3.0) + rng.normal(0, 1, (40, 2))
    bags = [rng.normal(size=(24, IN_DIM)) for _ in range(240)]
    embeddings = np.stack([slide_embedding(b) for b in bags])
    trust = fit_trust(
        logits, labels, embeddings[:40], embeddings[40:], class_names=["normal", "tumour"],
        slide_ids=[f"c{i}" for i in range(40)],
    )  # fmt: skip
    save_trust(trust, folder)
    return folder


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory) -> Served:
    root = tmp_path_factory.mktemp("served")
    rng = np.random.default_rng(0)
    slides = root / "slides"
    slides.mkdir()
    slide = write_synthetic_slide(
        slides / "case1.tiff", width=3072, height=2560, mpp=0.25, shapes=[TISSUE]
    )
    features = root / "features"
    features.mkdir()
    coords = tissue_coords()
    attrs = {**PROVENANCE, "patch_size_level0": TILE0, "slide_path": str(slide)}
    feats = rng.normal(size=(len(coords), IN_DIM)).astype(np.float32)
    write_feature_file(features / "case1.h5", feats, coords, attrs)
    models = root / "models"
    _tiny_model(models / "tiny", rng)
    predictions = root / "predictions"
    results = predict(models / "tiny", [features / "case1.h5"], predictions, slides=[slide])
    write_prediction_heatmaps(results, predictions, top_k=4)
    return Served(slides, features, models, predictions, "case1", coords)
