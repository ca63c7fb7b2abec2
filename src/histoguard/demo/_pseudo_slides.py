"""The demo's training set: pseudo-slides whose labels are known, so a model can be trained
offline in seconds.

With the shared data at hand the pseudo-slides are folders of real LC25000 lung tiles (normal
lung, with a few adenocarcinoma tiles in the "tumour" slides, one tile per original image so
augmented copies never leak); without it, generated H&E-like tiles where "tumour" tiles are
more cellular. Either way each pseudo-slide is a folder of tile images, which histoguard treats
as one slide, so the demo trains through the same code users run.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from histoguard.core._atomic import write_bytes_atomic
from histoguard.slide._synthetic import synthetic_tile

N_SLIDES = 24
TILES_PER_SLIDE = 16
TUMOUR_TILES = 4


def real_tile_paths(data_root: Path) -> dict[str, list[Path]] | None:
    """LC25000 lung tiles by class, one per original image, or None without the shared data."""
    root = data_root / "tiles" / "lc25000_lung"
    if not (root / "labels.csv").is_file():
        return None
    first: dict[str, dict[str, str]] = {}
    with (root / "labels.csv").open() as f:
        for row in csv.DictReader(f):
            first.setdefault(row["source_image_group"], row)
    return {
        label: [root / r["path"] for r in first.values() if r["label"] == label]
        for label in ("lung_n", "lung_aca")
    }


def build_training_slides(
    folder: Path, data_root: Path | None, *, seed: int = 0
) -> tuple[Path, list[Path], Literal["real", "generated"]]:
    """Write ``N_SLIDES`` pseudo-slides (tile folders) and their cohort table into ``folder``.

    Returns:
        ``(cohort.csv, slide folders, "real" or "generated")``.
    """
    rng = np.random.default_rng(seed)
    real = real_tile_paths(data_root) if data_root is not None else None
    source: Literal["real", "generated"] = "real" if real else "generated"
    lines = ["slide_id,label,patient_id,center"]
    slides = []
    used = {"lung_n": 0, "lung_aca": 0}
    for i in range(N_SLIDES):
        slide = folder / "slides" / f"pseudo{i:02d}"
        slide.mkdir(parents=True, exist_ok=True)
        tumour = i % 2 == 1
        kinds = ["lung_aca"] * (TUMOUR_TILES if tumour else 0)
        kinds += ["lung_n"] * (TILES_PER_SLIDE - len(kinds))
        for j, kind in enumerate(rng.permutation(kinds)):
            target = slide / f"tile{j:02d}{'.jpeg' if real else '.png'}"
            if real:
                shutil.copy(real[kind][used[kind] % len(real[kind])], target)
                used[kind] += 1
            else:
                density = 1 / 45 if kind == "lung_aca" else 1 / 220
                Image.fromarray(synthetic_tile(224, nuclei_per_px=density, seed=i * 100 + j)).save(
                    target
                )
        slides.append(slide)
        # Two pseudo-sites, each with both classes, so per-site metrics mean something.
        site = i // 2 % 2
        lines.append(f"pseudo{i:02d},{'tumour' if tumour else 'normal'},p{i:02d},site{site}")
    cohort = folder / "cohort.csv"
    write_bytes_atomic(cohort, ("\n".join(lines) + "\n").encode())
    return cohort, slides, source
