"""The demo's training set: pseudo-slides whose labels are known, so a model can be trained
offline in seconds.

With the data folder given (``histoguard demo --data DIR``) the pseudo-slides are folders of
real LC25000 lung tiles (normal lung, with a few adenocarcinoma tiles in the "tumour" slides).
Every tile comes from a different original image: LC25000's augmented copies of one image never
appear twice, neither within a pseudo-slide nor across pseudo-slides, so no copy can sit on both
sides of a cross-validation split. Without the data, generated H&E-like tiles where "tumour"
tiles are more cellular (nuclei per pixel 1/45 against 1/220): separable by construction. Either
way each pseudo-slide is a folder of tile images, which histoguard treats as one slide, so the
demo trains through the same code users run.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from histoguard.core._atomic import write_bytes_atomic
from histoguard.errors import ConfigError
from histoguard.slide._synthetic import synthetic_tile

#: Pseudo-slides (half "tumour", half "normal"), tiles in each, adenocarcinoma tiles in a
#: "tumour" one. 24 x 10 tiles need 204 normal and 36 adenocarcinoma originals: LC25000 has
#: about 250 originals per class, so no original is used twice.
N_SLIDES = 24
TILES_PER_SLIDE = 10
TUMOUR_TILES = 3
#: The demo's task: slide labels, and what a tile of each kind is on each data source.
LABELS = ("normal", "tumour")


def real_tile_paths(data_root: Path) -> dict[str, list[Path]] | None:
    """LC25000 lung tiles by class (``lung_n``, ``lung_aca``), one per original image, or None
    when ``data_root`` holds no ``tiles/lc25000_lung/labels.csv``."""
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

    Args:
        folder: where ``slides/pseudoNN/`` and ``cohort.csv`` are written.
        data_root: the real-data folder (LC25000 tiles are used from it when present), or None
            for generated tiles.
        seed: order of the tiles inside each pseudo-slide.

    Returns:
        ``(cohort.csv, slide folders, "real" or "generated")``.

    Raises:
        ConfigError: the LC25000 table lists too few distinct original images for the demo
            without reusing one.
    """
    rng = np.random.default_rng(seed)
    real = real_tile_paths(data_root) if data_root is not None else None
    source: Literal["real", "generated"] = "real" if real else "generated"
    if real:
        _check_enough_originals(real, data_root)
    lines = ["slide_id,label,patient_id,center"]
    slides = []
    used = {"lung_n": 0, "lung_aca": 0}
    for i in range(N_SLIDES):
        slide = folder / "slides" / f"pseudo{i:02d}"
        if slide.is_dir():  # a rerun rewrites the tiles: none may linger from another source
            shutil.rmtree(slide)
        slide.mkdir(parents=True)
        tumour = i % 2 == 1
        kinds = ["lung_aca"] * (TUMOUR_TILES if tumour else 0)
        kinds += ["lung_n"] * (TILES_PER_SLIDE - len(kinds))
        for j, kind in enumerate(rng.permutation(kinds)):
            target = slide / f"tile{j:02d}{'.jpeg' if real else '.png'}"
            if real:
                shutil.copy(real[kind][used[kind]], target)
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


def tiles_needed() -> dict[str, int]:
    """Distinct LC25000 originals the pseudo-slides use, per class."""
    tumour_slides = N_SLIDES // 2
    aca = tumour_slides * TUMOUR_TILES
    return {"lung_n": N_SLIDES * TILES_PER_SLIDE - aca, "lung_aca": aca}


def _check_enough_originals(real: dict[str, list[Path]], data_root: Path | None) -> None:
    for kind, needed in tiles_needed().items():
        if len(real[kind]) < needed:
            raise ConfigError(
                f"{data_root}/tiles/lc25000_lung/labels.csv: {len(real[kind])} original "
                f"{kind} images, the demo needs {needed} distinct ones (reusing one would put "
                "the same tile on both sides of a split); give the full LC25000 lung subset, "
                "or run the demo without --data on generated tiles"
            )
