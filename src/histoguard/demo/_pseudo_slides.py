"""The demo's slides with known labels: pseudo-slides to train and calibrate a model offline in
seconds, and two more it never sees, to show what an in-distribution prediction looks like.

With the data folder given (``histoguard demo --data DIR``) the pseudo-slides are folders of
real LC25000 lung tiles (normal lung, with a few adenocarcinoma tiles in the "tumour" slides).
LC25000 made its images by augmenting (rotating, flipping) originals; the table's
``source_image_group`` names each image's original. Tiles are drawn by group: a pseudo-slide
takes up to :data:`COPIES_PER_GROUP` copies of each of its groups, and a group used by one
pseudo-slide is used by no other (its remaining copies are left out), so no original can sit on
both sides of a cross-validation split, nor in a training slide and a calibration or held-out
one. Without the data, generated H&E-like tiles where "tumour" tiles are more cellular (nuclei
per pixel 1/45 against 1/220): separable by construction. Either way each pseudo-slide is a
folder of tile images, which histoguard treats as one slide, so the demo trains through the
same code users run. ``tiles.csv`` records where every tile came from.
"""

from __future__ import annotations

import csv
import io
import math
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from histoguard.core._atomic import write_bytes_atomic
from histoguard.errors import ConfigError
from histoguard.slide._synthetic import synthetic_tile

#: Pseudo-slides in the cohort (half "tumour", half "normal"), tiles in each, adenocarcinoma
#: tiles in a "tumour" one, and the most augmented copies of one original in one pseudo-slide.
#: 80 pseudo-slides use 200 normal and 40 adenocarcinoma originals (groups) and the held-out
#: ones 5 + 1 more: LC25000 has about 250 per class.
N_SLIDES = 80
TILES_PER_SLIDE = 8
TUMOUR_TILES = 3
COPIES_PER_GROUP = 3
#: Cohort slides held out of every fold to fit calibration, conformal sets and the gate: 10
#: per class, enough for a class-wise guarantee at alpha = 0.1 (9 each) and for the gate to
#: reach p <= 0.05 (19).
CALIBRATION_SLIDES = 20
#: The held-out in-distribution pseudo-slides (not in the cohort): name -> label.
HELD_OUT = {"held-out-normal": "normal", "held-out-tumour": "tumour"}
#: The demo's task: slide labels, and what a tile of each kind is on each data source.
LABELS = ("normal", "tumour")
MANIFEST_NAME = "tiles.csv"

_KIND = {"normal": "lung_n", "tumour": "lung_aca"}


@dataclass(frozen=True)
class PseudoSlides:
    """What :func:`build_pseudo_slides` wrote.

    Attributes:
        cohort: ``cohort.csv`` of the :data:`N_SLIDES` training and calibration pseudo-slides.
        slides: their folders, in the table's order.
        held_out: ``(folder, label)`` of the :data:`HELD_OUT` pseudo-slides, which the cohort
            table does not list.
        source: ``"real"`` (LC25000 tiles) or ``"generated"``.
        manifest: ``tiles.csv``: ``slide_id, tile, source, source_image_group`` per tile
            (source and group empty for generated tiles).
    """

    cohort: Path
    slides: tuple[Path, ...]
    held_out: tuple[tuple[Path, str], ...]
    source: Literal["real", "generated"]
    manifest: Path


def real_tile_groups(data_root: Path) -> dict[str, dict[str, tuple[Path, ...]]] | None:
    """LC25000 lung tiles by class (``lung_n``, ``lung_aca``), then by ``source_image_group``
    (one original's augmented copies), in table order, or None when ``data_root`` holds no
    ``tiles/lc25000_lung/labels.csv``."""
    root = data_root / "tiles" / "lc25000_lung"
    if not (root / "labels.csv").is_file():
        return None
    groups: dict[str, list[Path]] = {}
    label_of: dict[str, str] = {}
    with (root / "labels.csv").open() as f:
        for row in csv.DictReader(f):
            groups.setdefault(row["source_image_group"], []).append(root / row["path"])
            label_of[row["source_image_group"]] = row["label"]
    return {
        label: {group: tuple(paths) for group, paths in groups.items() if label_of[group] == label}
        for label in ("lung_n", "lung_aca")
    }


def real_tile_paths(data_root: Path) -> dict[str, list[Path]] | None:
    """LC25000 lung tiles by class (``lung_n``, ``lung_aca``), one per original image, or None
    when ``data_root`` holds no ``tiles/lc25000_lung/labels.csv``."""
    groups = real_tile_groups(data_root)
    if groups is None:
        return None
    return {label: [paths[0] for paths in found.values()] for label, found in groups.items()}


def _slide_kinds(label: str) -> dict[str, int]:
    """Tiles of each kind in a pseudo-slide of ``label``."""
    tumour = TUMOUR_TILES if label == "tumour" else 0
    return {"lung_aca": tumour, "lung_n": TILES_PER_SLIDE - tumour}


def _all_labels() -> list[str]:
    return [LABELS[i % 2] for i in range(N_SLIDES)] + list(HELD_OUT.values())


def groups_needed() -> dict[str, int]:
    """LC25000 groups (originals) the cohort and held-out pseudo-slides use, per class."""
    needed = {"lung_n": 0, "lung_aca": 0}
    for label in _all_labels():
        for kind, n in _slide_kinds(label).items():
            needed[kind] += math.ceil(n / COPIES_PER_GROUP)
    return needed


def _check_enough_groups(groups: dict[str, dict[str, tuple[Path, ...]]], data_root: Path) -> None:
    for kind, needed in groups_needed().items():
        usable = sum(len(g) >= COPIES_PER_GROUP for g in groups[kind].values())
        if usable < needed:
            raise ConfigError(
                f"{data_root}/tiles/lc25000_lung/labels.csv: {usable} {kind} originals "
                f"(source_image_group) with at least {COPIES_PER_GROUP} images, the demo needs "
                f"{needed} (one original in two pseudo-slides would put the same tissue on both "
                "sides of a split); give the full LC25000 lung subset, or run the demo without "
                "--data on generated tiles"
            )


def _group_pools(
    groups: dict[str, dict[str, tuple[Path, ...]]], rng: np.random.Generator
) -> dict[str, Iterator[tuple[str, tuple[Path, ...]]]]:
    """Per class, ``(group, tiles)`` of the usable groups in a seeded random order; each is
    handed out once."""
    pools = {}
    for kind, found in groups.items():
        usable = [(name, g) for name, g in found.items() if len(g) >= COPIES_PER_GROUP]
        pools[kind] = iter([usable[i] for i in rng.permutation(len(usable))])
    return pools


def _write_slide(
    slide: Path,
    label: str,
    pools: dict[str, Iterator[tuple[str, tuple[Path, ...]]]] | None,
    rng: np.random.Generator,
    index: int,
) -> list[list[str]]:
    """Write one pseudo-slide's tiles; its manifest rows ``[tile, source, group]`` (source:
    the LC25000 path inside ``tiles/lc25000_lung/``). ``index`` seeds generated tiles."""
    if slide.is_dir():  # a rerun rewrites the tiles: none may linger from another source
        shutil.rmtree(slide)
    slide.mkdir(parents=True)
    drawn: list[tuple[str, Path | None, str]] = []  # (kind, source tile, group)
    for kind, n in _slide_kinds(label).items():
        while n > 0:
            if pools is None:
                drawn.append((kind, None, ""))
                n -= 1
                continue
            name, group = next(pools[kind])
            take = min(COPIES_PER_GROUP, n)
            drawn += [(kind, path, name) for path in group[:take]]
            n -= take
    rows = []
    for j, k in enumerate(rng.permutation(len(drawn))):
        kind, source, group = drawn[k]
        target = slide / f"tile{j:02d}{'.jpeg' if source is not None else '.png'}"
        if source is not None:
            shutil.copy(source, target)
        else:
            density = 1 / 45 if kind == "lung_aca" else 1 / 220
            tile = synthetic_tile(224, nuclei_per_px=density, seed=index * 100 + j)
            Image.fromarray(tile).save(target)
        where = "" if source is None else f"{source.parent.name}/{source.name}"
        rows.append([target.name, where, group])
    return rows


def build_pseudo_slides(folder: Path, data_root: Path | None, *, seed: int = 0) -> PseudoSlides:
    """Write :data:`N_SLIDES` cohort pseudo-slides (tile folders), their cohort table, the
    :data:`HELD_OUT` pseudo-slides and ``tiles.csv`` into ``folder``.

    Args:
        folder: where ``slides/pseudoNN/``, ``held_out/<name>/``, ``cohort.csv`` and
            ``tiles.csv`` are written.
        data_root: the real-data folder (LC25000 tiles are used from it when present), or None
            for generated tiles.
        seed: which originals go to which pseudo-slide, and the tiles' order inside each.

    Returns:
        The :class:`PseudoSlides` written.

    Raises:
        ConfigError: the LC25000 table lists too few originals (groups) for every pseudo-slide
            to have groups of its own.
    """
    rng = np.random.default_rng(seed)
    groups = real_tile_groups(data_root) if data_root is not None else None
    source: Literal["real", "generated"] = "real" if groups else "generated"
    pools = None
    if groups and data_root is not None:
        _check_enough_groups(groups, data_root)
        pools = _group_pools(groups, rng)
    lines = ["slide_id,label,patient_id,center"]
    manifest = [["slide_id", "tile", "source", "source_image_group"]]
    slides = []
    for i, label in enumerate(_all_labels()[:N_SLIDES]):
        slide = folder / "slides" / f"pseudo{i:02d}"
        rows = _write_slide(slide, label, pools, rng, index=i)
        manifest += [[slide.name, *row] for row in rows]
        slides.append(slide)
        # Two pseudo-sites, each with both classes, so per-site metrics mean something.
        lines.append(f"pseudo{i:02d},{label},p{i:02d},site{i // 2 % 2}")
    held_out = []
    for h, (name, label) in enumerate(HELD_OUT.items()):
        slide = folder / "held_out" / name
        rows = _write_slide(slide, label, pools, rng, index=N_SLIDES + h)
        manifest += [[slide.name, *row] for row in rows]
        held_out.append((slide, label))
    cohort = folder / "cohort.csv"
    write_bytes_atomic(cohort, ("\n".join(lines) + "\n").encode())
    table = folder / MANIFEST_NAME
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(manifest)
    write_bytes_atomic(table, buffer.getvalue().encode())
    return PseudoSlides(
        cohort=cohort, slides=tuple(slides), held_out=tuple(held_out), source=source,
        manifest=table,
    )  # fmt: skip
