"""A small synthetic train run for the validation-report tests, built with the library."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from histoguard.features import write_feature_file
from histoguard.mil import TrainConfig, train

N_SLIDES = 48
TILES = 12
DIM = 8


def synthetic_run(root: Path, *, split: str = "kfold", seed: int = 0) -> Path:
    """48 feature bags over two centers (A shifted by a constant), half tumour (some tiles
    shifted), with a ``sex`` column; a 3-fold (or leave-one-center-out) ABMIL run with
    calibration slides. Returns the run folder."""
    rng = np.random.default_rng(seed)
    features = root / "features"
    features.mkdir(parents=True, exist_ok=True)
    lines = ["slide_id,label,patient_id,center,sex"]
    for i in range(N_SLIDES):
        tumour, center = i % 2, "A" if (i // 2) % 2 else "B"
        x = rng.normal(size=(TILES, DIM)) + 0.3 * (center == "A")
        x[: TILES // 3] += 2.0 * tumour
        coords = np.stack([np.arange(TILES) * 224, np.zeros(TILES, dtype=int)], axis=1)
        attrs = {"encoder": "hg-handcrafted", "weights_sha256": "", "mpp": 0.5, "tile_size": 224}
        write_feature_file(features / f"s{i:02d}.h5", x, coords, attrs)
        # Slides 0-7 come in pairs from one patient: the leak check must keep them together.
        patient = f"p{i // 2}" if i < 8 else f"p{i}"
        lines.append(
            f"s{i:02d},{'tumour' if tumour else 'normal'},{patient},{center},{'FM'[i % 3 == 0]}"
        )
    table = root / "cohort.csv"
    table.write_text("\n".join(lines) + "\n")
    out = root / f"run-{split}"
    train(
        TrainConfig(
            cohort=table, features=features, out=out, split=split,  # type: ignore[arg-type]
            k=3, epochs=8, lr=1e-3, n_boot=100, calibration_fraction=0.25,
        )
    )  # fmt: skip
    return out


@pytest.fixture(scope="session")
def report_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic k-fold run."""
    return synthetic_run(tmp_path_factory.mktemp("report-run"))
