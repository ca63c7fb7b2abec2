"""Real LC25000 lung embeddings for the uncertainty tests, computed once per session."""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from tests.conftest import grid_crops

from .pseudo_slides import Slides

CLASSES = ("lung_n", "lung_aca", "lung_scc")


@dataclass(frozen=True)
class LungSplits:
    """hg-cnn embeddings of LC25000 lung tiles in three group-disjoint splits."""

    x: dict[str, npt.NDArray[np.float32]]
    y: dict[str, npt.NDArray[np.int64]]
    groups: dict[str, set[str]]


@pytest.fixture(scope="session")
def lung_splits(shared_data: Path) -> LungSplits:
    """Train / calibration / test split by ``source_image_group`` (never by tile): per class
    40 / 30 / 30 groups, 1 / 2 / 2 tiles per group (the tiles of a group are augmentations of one
    image), embedded with the weightless ``hg-cnn`` encoder."""
    from histoguard.core._image import decode_image
    from histoguard.encoders import load_encoder

    root = shared_data / "tiles" / "lc25000_lung"
    by_group: dict[str, list[dict[str, str]]] = defaultdict(list)
    with (root / "labels.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            by_group[row["source_image_group"]].append(row)
    rng = np.random.default_rng(0)
    sizes = {"train": 40, "calib": 30, "test": 30}
    per_group = {"train": 1, "calib": 2, "test": 2}
    picked: dict[str, list[dict[str, str]]] = {name: [] for name in sizes}
    groups: dict[str, set[str]] = {name: set() for name in sizes}
    for label in CLASSES:
        names = sorted(g for g, rows in by_group.items() if rows[0]["label"] == label)
        order = rng.permutation(len(names))
        start = 0
        for split, size in sizes.items():
            for i in order[start : start + size]:
                groups[split].add(names[i])
                picked[split].extend(
                    sorted(by_group[names[i]], key=lambda r: r["path"])[: per_group[split]]
                )
            start += size
    encoder = load_encoder("hg-cnn")
    x: dict[str, npt.NDArray[np.float32]] = {}
    y: dict[str, npt.NDArray[np.int64]] = {}
    for split, rows in picked.items():
        images = np.stack([decode_image(root / r["path"]) for r in rows])
        x[split] = np.asarray(encoder.encode(images), dtype=np.float32)
        y[split] = np.array([CLASSES.index(r["label"]) for r in rows], dtype=np.int64)
    return LungSplits(x=x, y=y, groups=groups)


# --- issue 10's real-data checks: every tile embedded once per session -----------------------

#: LC25000 lung classes in the order of the three-class slide task.
LUNG_TASK_CLASSES = ("lung_n", "lung_aca", "lung_scc")
#: Colorectal classes of the shared GlaS / EBHI label space (DATA.md).
COLON_CLASSES = ("benign", "malignant")
EBHI_CLASS = {"Normal": 0, "Polyp": 0, "Adenocarcinoma": 1}
#: The strong shifts of the perturbation registry applied to every lung tile, as (perturbation,
#: severity): a stain shift and a scanner shift, both at the registry's top severity, chosen
#: before any measurement as "strong" by their size alone. ``hed_jitter`` 5: each tile's
#: haematoxylin, eosin and DAB concentrations scaled by up to +-20 % and shifted by up to
#: +-0.2 OD (severity 2, sigma 0.05, is the size of light stain augmentation).
#: ``colour_response`` 5: a scanner gamma of up to 1.3^+-1 and R, G, B gains of up to +-30 %.
#: Both draw a new change per tile.
#: Strong shifts of the lung tiles: per-tile random stain jitter and scanner colour response
#: at their top severities, and a systematic stain shift, every tile Macenko-transferred in full
#: to the stain appearance of one reference image (``stain_refs/tiatoolbox_target_image.png``).
LUNG_SHIFTS = (("hed_jitter", 5), ("colour_response", 5), ("stain_transfer_tiatoolbox", 5))
STAIN_REFERENCE = "tiatoolbox_target_image.png"
TILE = 224
_CHUNK = 256


@dataclass(frozen=True)
class TileEmbeddings:
    """hg-cnn embeddings of real tiles with what pseudo-slides need to keep them apart.

    Attributes:
        features: (N, 256) float32 embeddings.
        labels: (N,) int64 class index (LUNG_TASK_CLASSES or COLON_CLASSES).
        units: (N,) the unit a tile may never leave: LC25000 ``source_image_group``, GlaS
            ``patient``, EBHI ``specimen``.
        centers: (N,) the institution.
        images: (N,) the source image file (GlaS images give several tiles).
    """

    features: npt.NDArray[np.float32]
    labels: npt.NDArray[np.int64]
    units: npt.NDArray[np.str_]
    centers: npt.NDArray[np.str_]
    images: npt.NDArray[np.str_]


@dataclass(frozen=True)
class TrustTiles:
    """Every tile the issue-10 checks use, embedded once.

    Attributes:
        lung: all LC25000 lung tiles (740 source-image groups x 4).
        lung_shifted: per ``LUNG_SHIFTS`` name, (N_lung, 256) embeddings of the same tiles
            after that shift, in ``lung``'s row order.
        colon: GlaS (224-px grid crops of each image at native resolution) and the EBHI tiles of
            the shared label space (Normal, Polyp, Adenocarcinoma).
        seconds: wall time per part of the fixture.
    """

    lung: TileEmbeddings
    lung_shifted: dict[str, npt.NDArray[np.float32]]
    colon: TileEmbeddings
    seconds: dict[str, float]


@pytest.fixture
def one_blas_thread() -> Iterator[None]:
    """BLAS on one thread during a test: on a busy 2-core machine OpenBLAS's two threads made a
    256 x 256 eigh (the Mahalanobis gate's covariance) 10 to 30 times slower than one."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


@pytest.fixture(scope="session")
def trust_tiles(shared_data: Path) -> TrustTiles:
    """hg-cnn embeddings of all LC25000 lung tiles, of the same tiles under ``LUNG_SHIFTS``, and
    of the colorectal GlaS and EBHI tiles (see the timing it prints)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):  # see one_blas_thread
        return _trust_tiles(shared_data)


def _trust_tiles(shared_data: Path) -> TrustTiles:
    import time

    from histoguard.core._image import decode_image
    from histoguard.encoders import load_encoder
    from histoguard.robustness.shifts._perturbations import (
        get_perturbation,
        stain_transfer_perturbation,
    )

    encoder = load_encoder("hg-cnn")
    seconds: dict[str, float] = {}
    start, cpu = time.perf_counter(), time.process_time()
    root = shared_data / "tiles" / "lc25000_lung"
    with (root / "labels.csv").open(newline="") as handle:
        rows = sorted(csv.DictReader(handle), key=lambda r: (r["source_image_group"], r["path"]))
    reference = decode_image(shared_data / "stain_refs" / STAIN_REFERENCE)
    shifts = {
        name: (
            stain_transfer_perturbation(reference, name.removeprefix("stain_transfer_"))
            if name.startswith("stain_transfer_")
            else get_perturbation(name)
        )
        for name, _ in LUNG_SHIFTS
    }
    parts: dict[str, list[npt.NDArray[np.float32]]] = {"lung": [], **{n: [] for n in shifts}}
    for first in range(0, len(rows), _CHUNK):
        chunk = rows[first : first + _CHUNK]
        tiles = np.stack([decode_image(root / r["path"]) for r in chunk])
        parts["lung"].append(encoder.encode(tiles))
        for name, severity in LUNG_SHIFTS:
            shifted = shifts[name].apply(tiles, severity, seed=0, first_index=first)
            parts[name].append(encoder.encode(shifted))
    lung = TileEmbeddings(
        features=np.concatenate(parts["lung"]).astype(np.float32),
        labels=np.array([LUNG_TASK_CLASSES.index(r["label"]) for r in rows], dtype=np.int64),
        units=np.array([r["source_image_group"] for r in rows]),
        centers=np.full(len(rows), "LC25000"),
        images=np.array([r["path"] for r in rows]),
    )
    lung_shifted = {n: np.concatenate(parts[n]).astype(np.float32) for n in shifts}
    seconds["lung + shifted lung"] = time.perf_counter() - start
    seconds["lung + shifted lung, CPU"] = time.process_time() - cpu

    start, cpu = time.perf_counter(), time.process_time()
    pending: list[npt.NDArray[np.uint8]] = []
    colon_features: list[npt.NDArray[np.float32]] = []
    labels: list[int] = []
    units: list[str] = []
    centers: list[str] = []
    images: list[str] = []

    def add(tile: npt.NDArray[np.uint8], label: int, unit: str, center: str, image: str) -> None:
        pending.append(tile)
        labels.append(label)
        units.append(unit)
        centers.append(center)
        images.append(image)
        if len(pending) == _CHUNK:
            colon_features.append(encoder.encode(np.stack(pending)))
            pending.clear()

    glas = shared_data / "tiles" / "glas"
    with (glas / "labels.csv").open(newline="") as handle:
        for r in csv.DictReader(handle):
            for crop in grid_crops(decode_image(glas / r["path"]), TILE):
                add(
                    crop, COLON_CLASSES.index(r["label"]), f"GlaS:{r['patient']}", "GlaS", r["path"]
                )
    ebhi = shared_data / "tiles" / "ebhi_seg"
    with (ebhi / "labels.csv").open(newline="") as handle:
        for r in csv.DictReader(handle):
            if r["label"] in EBHI_CLASS:
                tile = decode_image(ebhi / r["path"])
                add(tile, EBHI_CLASS[r["label"]], f"EBHI:{r['specimen']}", "EBHI", r["path"])
    if pending:
        colon_features.append(encoder.encode(np.stack(pending)))
    colon = TileEmbeddings(
        features=np.concatenate(colon_features).astype(np.float32),
        labels=np.array(labels, dtype=np.int64),
        units=np.array(units),
        centers=np.array(centers),
        images=np.array(images),
    )
    seconds["colorectal"] = time.perf_counter() - start
    seconds["colorectal, CPU"] = time.process_time() - cpu
    print("\ntrust_tiles fixture: " + ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()))
    return TrustTiles(lung=lung, lung_shifted=lung_shifted, colon=colon, seconds=seconds)


#: Slide tasks of the checks: class names per task, and the slide label from the tile class.
SLIDE_TASKS: dict[str, tuple[str, ...]] = {
    "three-class": LUNG_TASK_CLASSES,
    "binary": ("normal", "tumour"),
}
#: Seeds of the slide checks: each redraws the pseudo-slides, the division and the model.
SLIDE_SEEDS = 5


@dataclass(frozen=True)
class SlideRun:
    """One seed of the slide checks: LC25000 pseudo-slides, a model per task, its readings.

    Attributes:
        seed: the seed that drew everything below.
        slides: the lung pseudo-slides (S of them).
        train: (S,) True for the slides the models (and the gate's reference) saw.
        held_out: (H,) indices of the other slides, exchangeable with each other.
        calibration: (H,) True for the held-out slides the seed's calibrator and gate are
            fitted on (half of each class); the rest are its test slides.
        labels: per task, (S,) slide labels.
        probabilities: per task, (H, C) ``predict`` probabilities of the held-out slides.
        shifted_probabilities: per shift name, per task, (H, C) the same after the shift.
        embeddings: (S, 256) gate embeddings of all lung slides.
        shifted_embeddings: per shift name, (H, 256) of the shifted held-out slides.
        colon: colorectal pseudo-slides drawn with this seed.
        colon_embeddings: (S_colon, 256) their gate embeddings.
    """

    seed: int
    slides: Slides
    train: npt.NDArray[np.bool_]
    held_out: npt.NDArray[np.int64]
    calibration: npt.NDArray[np.bool_]
    labels: dict[str, npt.NDArray[np.int64]]
    probabilities: dict[str, npt.NDArray[np.float64]]
    shifted_probabilities: dict[str, dict[str, npt.NDArray[np.float64]]]
    embeddings: npt.NDArray[np.float64]
    shifted_embeddings: dict[str, npt.NDArray[np.float64]]
    colon: Slides
    colon_embeddings: npt.NDArray[np.float64]


@pytest.fixture(scope="session")
def slide_runs(trust_tiles: TrustTiles) -> list[SlideRun]:
    """SLIDE_SEEDS seeds of pseudo-slides, trained ABMIL models (three-class and binary) and
    their predictions and gate embeddings, in-distribution and shifted."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):  # see one_blas_thread
        return _slide_runs(trust_tiles)


def _slide_runs(trust_tiles: TrustTiles) -> list[SlideRun]:
    import time

    from . import pseudo_slides as ps

    start, cpu = time.perf_counter(), time.process_time()
    lung = trust_tiles.lung
    runs = []
    for seed in range(SLIDE_SEEDS):
        rng = np.random.default_rng(1000 + seed)
        slides = ps.lung_slides(lung.units, lung.labels, rng)
        train = ps.stratified_split(slides.labels, ps.TRAIN_SHARE, rng)
        held_out = np.flatnonzero(~train)
        calibration = ps.stratified_split(slides.labels[held_out], 0.5, rng)
        labels = {"three-class": slides.labels, "binary": (slides.labels > 0).astype(np.int64)}
        bags = [slides.tiles[i] for i in held_out]
        train_bags = [slides.tiles[i] for i in np.flatnonzero(train)]
        probabilities: dict[str, npt.NDArray[np.float64]] = {}
        shifted: dict[str, dict[str, npt.NDArray[np.float64]]] = {n: {} for n, _ in LUNG_SHIFTS}
        for task, names in SLIDE_TASKS.items():
            model = ps.train_abmil(lung.features, train_bags, labels[task][train], len(names), seed)
            probabilities[task] = ps.predict_slides(model, lung.features, bags)
            for name in shifted:
                features = trust_tiles.lung_shifted[name]
                shifted[name][task] = ps.predict_slides(model, features, bags)
        colon = ps.colon_slides(
            trust_tiles.colon.units, trust_tiles.colon.labels, trust_tiles.colon.centers, rng
        )
        runs.append(
            SlideRun(
                seed=seed,
                slides=slides,
                train=train,
                held_out=held_out,
                calibration=calibration,
                labels=labels,
                probabilities=probabilities,
                shifted_probabilities=shifted,
                embeddings=ps.slide_embeddings(lung.features, slides.tiles),
                shifted_embeddings={
                    n: ps.slide_embeddings(trust_tiles.lung_shifted[n], bags) for n in shifted
                },
                colon=colon,
                colon_embeddings=ps.slide_embeddings(trust_tiles.colon.features, colon.tiles),
            )
        )
    print(
        f"\nslide_runs fixture: {SLIDE_SEEDS} seeds x 2 models, "
        f"{time.perf_counter() - start:.1f} s ({time.process_time() - cpu:.1f} s CPU)"
    )
    return runs
