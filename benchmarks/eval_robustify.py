"""Before / after robustification on real multi-center tiles: what harmonisation and
training-time robustness buy, over seeds, with intervals (the numbers in docs/robustify.md).

Data: the shared GlaS (UK) and EBHI-Seg (China) tiles in their common benign / malignant label
space (GlaS images as 224-px grid crops; EBHI Normal + Polyp = benign, Adenocarcinoma =
malignant), and any further center given with ``--extra-table`` (CSV: ``path``, ``label``
benign|malignant, ``unit`` = patient or specimen, ``center``; paths relative to the table). Nothing
here is specific to the two shared centers.

Part 1, embeddings (each built-in encoder, ``--seeds`` seeds): per seed, 5 folds grouped by unit
(patient / specimen); each fold's harmoniser (the class as covariate) and its linear probes
(center; benign / malignant) are fitted on its training units only and scored on its held-out
units: the site-probe AUROC, the task's balanced accuracy and the PathoROB robustness index of
the held-out embeddings, pooled over folds. Reported: mean over seeds with a 95 % t-interval,
and the paired change against no harmonisation.

Part 2, slide models under leave-one-center-out: pseudo-slides of 4-12 tiles of one unit and one
class (tile-disjoint, unit-disjoint across centers by construction), ``histoguard train
--split leave-one-center-out`` with each option against the plain model; AUROC and balanced
accuracy on each held-out center, mean and range over seeds.

Usage::

    python benchmarks/eval_robustify.py [--seeds 5] [--encoders hg-cnn hg-d4 hg-handcrafted]
        [--loco-seeds 3] [--extra-table third_center.csv] [--cache /tmp/hg-embeddings]
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import platform
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from scipy import stats
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold

from _shared_data import SHARED_DATA
from histoguard.harmonize import Harmonizer, design_from_labels
from histoguard.robustness import LabelledEmbeddings
from histoguard.robustness.metrics._linear_probe import fit_linear_probe
from histoguard.robustness.metrics._robustness_index import (
    RobustnessIndexConfig,
    robustness_index,
)

TILE = 224
CLASSES = ("benign", "malignant")
EBHI_CLASS = {"Normal": "benign", "Polyp": "benign", "Adenocarcinoma": "malignant"}
METHODS = ("none", "combat", "covbat")
FOLDS = 5
SLIDE_TILES = (4, 12)
#: Augmented views averaged by the "views" variant, and their chain (default severities).
VIEWS = 4
VIEW_CHAIN = ("hed_jitter",)
#: Stain-normalisation target of the pixel-level variant: a lab that is neither GlaS nor EBHI.
STAIN_REFERENCE = "stain_refs/torchstain_target.png"


@dataclass(frozen=True)
class Tiles:
    """Tile images with class, unit (patient / specimen) and center per tile."""

    images: list[np.ndarray]
    labels: npt.NDArray[np.str_]
    units: npt.NDArray[np.str_]
    centers: npt.NDArray[np.str_]


def grid_crops(image: np.ndarray, size: int) -> list[np.ndarray]:
    """Non-overlapping ``size`` crops of an image, row by row (the remainder is dropped)."""
    h, w = image.shape[:2]
    return [
        image[y : y + size, x : x + size]
        for y in range(0, h - size + 1, size)
        for x in range(0, w - size + 1, size)
    ]


def load_tiles(extra_tables: Sequence[Path]) -> Tiles:
    """GlaS crops, EBHI tiles of the shared label space, and the tiles of any extra table."""
    from histoguard.core._image import decode_image

    images, labels, units, centers = [], [], [], []

    def add(image: np.ndarray, label: str, unit: str, center: str) -> None:
        images.append(image)
        labels.append(label)
        units.append(f"{center}:{unit}")
        centers.append(center)

    glas = SHARED_DATA / "tiles" / "glas"
    with (glas / "labels.csv").open(newline="") as handle:
        for r in csv.DictReader(handle):
            for crop in grid_crops(decode_image(glas / r["path"]), TILE):
                add(crop, r["label"], r["patient"], "GlaS")
    ebhi = SHARED_DATA / "tiles" / "ebhi_seg"
    with (ebhi / "labels.csv").open(newline="") as handle:
        for r in sorted(csv.DictReader(handle), key=lambda r: r["path"]):
            if r["label"] in EBHI_CLASS:
                add(decode_image(ebhi / r["path"]), EBHI_CLASS[r["label"]], r["specimen"], "EBHI")
    for table in extra_tables:
        with table.open(newline="") as handle:
            for r in csv.DictReader(handle):
                if r["label"] not in CLASSES:
                    raise SystemExit(f"{table}: label {r['label']!r} is not one of {CLASSES}")
                image = decode_image(table.parent / r["path"])
                for crop in grid_crops(image, TILE) if image.shape[0] > TILE else [image]:
                    add(crop, r["label"], r["unit"], r["center"])
    return Tiles(images, np.array(labels), np.array(units), np.array(centers))


def embed(
    tiles: Tiles, encoder_name: str, cache: Path | None, *, stain: str | None = None
) -> npt.NDArray[np.float32]:
    """``(N, D)`` embeddings of every tile (cached by encoder, stain step and tile count);
    ``stain="macenko"`` normalises every tile to :data:`STAIN_REFERENCE` first; ``"views"``
    averages the plain embedding with :data:`VIEWS` augmented views (:data:`VIEW_CHAIN`),
    as ``extract --views K --views-mode mean`` does."""
    if stain == "views":
        return _view_mean(tiles, encoder_name, cache)
    from histoguard.core._image import decode_image
    from histoguard.encoders import load_encoder
    from histoguard.stain import stain_normalizer

    tag = f"{encoder_name}{'-' + stain if stain else ''}-{len(tiles.images)}"
    path = None if cache is None else cache / f"{tag}.npy"
    if path is not None and path.is_file():
        return np.load(path)
    encoder = load_encoder(encoder_name)
    normalise = (
        stain_normalizer(stain, decode_image(SHARED_DATA / STAIN_REFERENCE)).transform
        if stain
        else (lambda batch: batch)
    )
    features = np.concatenate(
        [
            encoder.encode(normalise(np.stack(tiles.images[i : i + 128])))
            for i in range(0, len(tiles.images), 128)
        ]
    ).astype(np.float32)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, features)
    return features


def _view_mean(tiles: Tiles, encoder_name: str, cache: Path | None) -> npt.NDArray[np.float32]:
    from histoguard.augment import augment_view, parse_augmentations
    from histoguard.encoders import load_encoder

    path = None if cache is None else cache / f"{encoder_name}-views{VIEWS}-{len(tiles.images)}.npy"
    if path is not None and path.is_file():
        return np.load(path)
    encoder = load_encoder(encoder_name)
    chain = parse_augmentations(VIEW_CHAIN)
    total = embed(tiles, encoder_name, cache).astype(np.float64)
    for view in range(VIEWS):
        for i in range(0, len(tiles.images), 128):
            batch = np.stack(tiles.images[i : i + 128])
            rows = np.arange(i, i + len(batch))
            augmented = augment_view(batch, chain, seed=0, view=view, indices=rows)
            total[i : i + len(batch)] += encoder.encode(augmented)
    features = (total / (VIEWS + 1)).astype(np.float32)
    if path is not None:
        np.save(path, features)
    return features


def nested_readings(
    features: np.ndarray, tiles: Tiles, method: str, seed: int, k: int | None = None
) -> dict[str, float]:
    """Site-probe AUROC, task balanced accuracy and robustness index of ``method``, nested in
    5 unit-grouped folds: each fold's harmoniser *and* probes are fitted on its training units
    only (the harmoniser with the class as covariate; probes with ``C`` chosen on held-out
    training slides) and scored on its held-out units, pooled over the folds. The robustness
    index is computed on the pooled held-out embeddings (no fitting involved), at ``k``
    neighbours (None: the k of best kNN balanced accuracy; a before / after comparison passes
    the k chosen before, since RI grows with k).

    Scoring a harmonised set with a probe cross-validated on folds other than the
    harmoniser's reads chance level wrongly: each held-out unit's residual center effect is
    anti-correlated with the training units' (they sum to zero), which drives the AUROC far
    *below* 0.5 (0.15-0.29 measured for hg-cnn), i.e. still informative.
    """
    strata = np.char.add(np.char.add(tiles.centers, "/"), tiles.labels)
    folds = StratifiedGroupKFold(FOLDS, shuffle=True, random_state=seed)
    centers = sorted(set(tiles.centers.tolist()))
    site_scores = np.zeros((len(features), len(centers)))
    task_predictions = np.empty(len(features), dtype=object)
    harmonised = np.empty_like(features)
    for train_rows, test_rows in folds.split(features, strata, tiles.units):
        train_x, test_x = features[train_rows], features[test_rows]
        if method != "none":
            h = Harmonizer(method=method)  # type: ignore[arg-type]
            h.fit(train_x, tiles.centers[train_rows], design_from_labels(tiles.labels[train_rows]))
            train_x = h.transform(train_x, tiles.centers[train_rows])
            test_x = h.transform(test_x, tiles.centers[test_rows])
        harmonised[test_rows] = test_x
        units = tiles.units[train_rows]
        site = fit_linear_probe(train_x, tiles.centers[train_rows], groups=units, seed=seed)
        probabilities = site.predict_proba(test_x)
        site_scores[test_rows] = probabilities[:, [site.classes.index(c) for c in centers]]
        task = fit_linear_probe(train_x, tiles.labels[train_rows], groups=units, seed=seed)
        task_predictions[test_rows] = task.predict(test_x)
    truth = np.array([centers.index(c) for c in tiles.centers])
    site_auroc = (
        roc_auc_score(truth, site_scores[:, 1])
        if len(centers) == 2
        else roc_auc_score(truth, site_scores, multi_class="ovr", average="macro")
    )
    data = LabelledEmbeddings(
        embeddings=harmonised.astype(np.float32),
        label=tiles.labels,
        center=tiles.centers,
        slide_id=tiles.units,
    )
    ri = robustness_index(data, RobustnessIndexConfig(k=k, n_bootstrap=20, paired=False, seed=seed))
    return {
        "k": float(ri.k),
        "site_auroc": float(site_auroc),
        "task_balanced_accuracy": float(
            balanced_accuracy_score(tiles.labels, task_predictions.astype(str))
        ),
        "robustness_index": ri.value,
    }


def t_interval(values: Sequence[float]) -> str:
    """``mean [low, high]``: 95 % t-interval over seeds."""
    x = np.asarray(values, dtype=float)
    if x.size < 2:
        return f"{x.mean():.3f}"
    half = stats.t.ppf(0.975, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size)
    return f"{x.mean():.3f} [{x.mean() - half:.3f}, {x.mean() + half:.3f}]"


def part_embeddings(tiles: Tiles, encoders: Sequence[str], seeds: int, cache: Path | None) -> None:
    print("\n## Part 1: embeddings, out-of-fold harmonisation, mean [95 % t-interval] over "
          f"{seeds} seeds\n")  # fmt: skip
    print("| encoder | cure | site-probe AUROC | robustness index | task balanced "
          "accuracy | change in RI | change in balanced accuracy |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for name in encoders:
        started = time.perf_counter()
        variants = {
            "": embed(tiles, name, cache),
            "Macenko": embed(tiles, name, cache, stain="macenko"),
            f"HED views (mean of {VIEWS + 1})": embed(tiles, name, cache, stain="views"),
        }
        readings: dict[str, list[dict[str, float]]] = defaultdict(list)
        for seed in range(seeds):
            k = None
            for stain, features in variants.items():
                for method in METHODS:  # plain "none" first: its k is used for the others
                    reading = nested_readings(features, tiles, method, seed, k)
                    readings[_variant(stain, method)].append(reading)
                    k = int(readings[_variant("", "none")][-1]["k"])
        before = readings[_variant("", "none")]
        for variant, rows in readings.items():

            def change(
                key: str,
                rows: list[dict[str, float]] = rows,
                before: list[dict[str, float]] = before,
            ) -> str:
                if rows is before:
                    return "—"
                return t_interval(np.subtract([r[key] for r in rows], [r[key] for r in before]))

            print(
                f"| {name} | {variant} | {t_interval([r['site_auroc'] for r in rows])} | "
                f"{t_interval([r['robustness_index'] for r in rows])} | "
                f"{t_interval([r['task_balanced_accuracy'] for r in rows])} | "
                f"{change('robustness_index')} | {change('task_balanced_accuracy')} |"
            )
        ks = sorted({int(r["k"]) for r in before})
        print(f"<!-- {name}: {variants[''].shape}, RI at k = {ks}, "
              f"{time.perf_counter() - started:.0f} s -->")  # fmt: skip
        sys.stdout.flush()


def _variant(stain: str, method: str) -> str:
    """``"none"``, ``"combat"``, ``"Macenko"``, ``"Macenko + covbat"`` ..."""
    if not stain:
        return method
    return stain if method == "none" else f"{stain} + {method}"


def pseudo_slides(tiles: Tiles, seed: int) -> list[tuple[str, npt.NDArray[np.int64]]]:
    """Bags of 4-12 tiles of one unit and one class: ``(slide_id, tile rows)``."""
    rng = np.random.default_rng(seed)
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for row, key in enumerate(zip(tiles.units.tolist(), tiles.labels.tolist(), strict=True)):
        groups[key].append(row)
    slides = []
    for (unit, label), rows in sorted(groups.items()):
        order = np.array(rows)[rng.permutation(len(rows))]
        part = 0
        while order.size:
            take = int(rng.integers(SLIDE_TILES[0], SLIDE_TILES[1] + 1))
            name = f"{unit}-{label}-{part}".replace(":", "_").replace("/", "_")
            slides.append((name, order[:take]))
            order, part = order[take:], part + 1
    return slides


def write_cohort(
    tiles: Tiles, features: np.ndarray, slides: list[tuple[str, np.ndarray]], folder: Path
) -> Path:
    from histoguard.features import write_feature_file

    (folder / "features").mkdir(parents=True, exist_ok=True)
    lines = ["slide_id,label,patient_id,center"]
    for name, rows in slides:
        coords = np.stack([rows, np.zeros_like(rows)], axis=1)
        write_feature_file(folder / "features" / f"{name}.h5", features[rows], coords,
                           {"encoder": "eval"})  # fmt: skip
        first = rows[0]
        lines.append(f"{name},{tiles.labels[first]},{tiles.units[first].replace(',', '_')},"
                     f"{tiles.centers[first]}")  # fmt: skip
    (folder / "cohort.csv").write_text("\n".join(lines) + "\n")
    return folder / "cohort.csv"


def loco_options() -> dict[str, dict[str, object]]:
    """The training options compared under leave-one-center-out, by name."""
    from histoguard.mil import TrainConfig

    options: dict[str, dict[str, object]] = {
        "plain": {},
        "harmonize combat": {"harmonize": "combat"},
        "harmonize covbat": {"harmonize": "covbat"},
        "contrastive 0.2": {"contrastive_weight": 0.2},
    }
    if "adversarial_unlabelled" in {f.name for f in dataclasses.fields(TrainConfig)}:
        options["adversarial 1.0 (unlabelled held-out)"] = {
            "adversarial_weight": 1.0, "adversarial_unlabelled": True, "bags_per_step": 8,
        }  # fmt: skip
    return options


def held_out_scores(run: Path) -> dict[str, tuple[float, float]]:
    """Per held-out center: AUROC and balanced accuracy of its slides (malignant positive)."""
    by_center: dict[str, list[tuple[int, float]]] = defaultdict(list)
    with (run / "predictions.csv").open(newline="") as handle:
        for r in csv.DictReader(handle):
            by_center[r["center"]].append((int(r["label"] == "malignant"), float(r["p_malignant"])))
    out = {}
    for center, pairs in by_center.items():
        y, p = np.array([a for a, _ in pairs]), np.array([b for _, b in pairs])
        out[center] = (float(roc_auc_score(y, p)), float(balanced_accuracy_score(y, p > 0.5)))
    return out


def part_loco(tiles: Tiles, encoders: Sequence[str], seeds: int, cache: Path | None) -> None:
    from histoguard.mil import TrainConfig, train

    print(f"\n## Part 2: leave-one-center-out slide models (abmil), mean (min-max) over {seeds} "
          "seeds, on each held-out center\n")  # fmt: skip
    print("| encoder | option | held-out center | AUROC | balanced accuracy | "
          "AUROC − plain |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for name in encoders:
        features = embed(tiles, name, cache)
        with tempfile.TemporaryDirectory() as tmp:
            results: dict[str, dict[str, list[tuple[float, float]]]] = {}
            for seed in range(seeds):
                folder = Path(tmp) / f"seed{seed}"
                cohort = write_cohort(tiles, features, pseudo_slides(tiles, seed), folder)
                for option, settings in loco_options().items():
                    config = TrainConfig(
                        cohort=cohort, features=folder / "features",
                        out=folder / option.replace(" ", "_"), model="abmil",
                        split="leave-one-center-out", epochs=30, patience=6, lr=5e-4,
                        calibration_fraction=0.0, n_boot=50, seed=seed,
                        **settings,  # type: ignore[arg-type]
                    )  # fmt: skip
                    train(config)
                    for center, scores in held_out_scores(config.out).items():
                        results.setdefault(option, defaultdict(list))[center].append(scores)
        for option, per_center in results.items():
            for center, scores in sorted(per_center.items()):
                auc = np.array([s[0] for s in scores])
                ba = np.array([s[1] for s in scores])
                plain = np.array([s[0] for s in results["plain"][center]])
                print(
                    f"| {name} | {option} | {center} | {auc.mean():.3f} ({auc.min():.3f}–"
                    f"{auc.max():.3f}) | {ba.mean():.3f} ({ba.min():.3f}–{ba.max():.3f}) | "
                    f"{'—' if option == 'plain' else f'{(auc - plain).mean():+.3f}'} |"
                )
        for center in sorted(results["plain"]):
            for metric, index in (("AUROC", 0), ("balanced accuracy", 1)):
                means = {
                    option: float(np.mean([s[index] for s in per_center[center]]))
                    for option, per_center in results.items()
                }
                best = max(means, key=means.__getitem__)
                print(f"<!-- {name}, held-out {center}: best {metric} {best} "
                      f"({means[best]:.3f}; plain {means['plain']:.3f}) -->")  # fmt: skip
        sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--loco-seeds", type=int, default=3)
    parser.add_argument("--encoders", nargs="+", default=["hg-cnn", "hg-d4", "hg-handcrafted"])
    parser.add_argument("--loco-encoders", nargs="+", default=None)
    parser.add_argument("--extra-table", type=Path, action="append", default=[])
    parser.add_argument("--cache", type=Path, default=None)
    parser.add_argument("--skip", choices=("embeddings", "loco"), action="append", default=[])
    args = parser.parse_args()
    # Harmonisers warn about neutralised features on every fold; the docs say what they do.
    warnings.filterwarnings("ignore", message=".*constant within a training center")
    warnings.filterwarnings("ignore", message=".*harmonised label-free")
    tiles = load_tiles(args.extra_table)
    counts = {c: int((tiles.centers == c).sum()) for c in np.unique(tiles.centers)}
    units = {c: len(set(tiles.units[tiles.centers == c])) for c in counts}
    print(f"# eval_robustify — {time.strftime('%Y-%m-%d')}, {platform.node()}, "
          f"{platform.processor() or platform.machine()}")  # fmt: skip
    print(f"command: {' '.join(sys.argv)}")
    print(f"tiles per center: {counts}; units per center: {units}")
    if "embeddings" not in args.skip:
        part_embeddings(tiles, args.encoders, args.seeds, args.cache)
    if "loco" not in args.skip:
        part_loco(tiles, args.loco_encoders or args.encoders, args.loco_seeds, args.cache)


if __name__ == "__main__":
    main()
