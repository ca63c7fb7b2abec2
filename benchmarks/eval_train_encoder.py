"""Does training ``hg-d4`` on one hospital's tile labels help at another? GlaS (UK) -> EBHI-Seg
(China) and the reverse, in the shared benign / malignant label space (DATA.md).

Per direction and seed: ``train_encoder`` on every source tile (GlaS: 224-px grid crops,
patients as slides; EBHI: Normal + Polyp = benign, Adenocarcinoma = malignant, specimens as
slides), then a linear probe (standardised logistic regression) on the *target* embeddings,
out-of-fold over 5 folds grouped by target patient / specimen: balanced accuracy. Against the
same probe on ``hg-handcrafted`` and on the random-init ``hg-d4``. Every tile is downsized to
``--size`` px (the CPU budget; training at ``tile_size=--size``). Reported: mean over seeds
with a 95 % t-interval (the baselines have no seed: one number).

With ``--pretrain-epochs N`` each seed first trains SimCLR (``objective="simclr"``, labels not
read) for up to N epochs on the source tiles (``--pretrain-on source``) or on the source and the
target tiles without their labels (``--pretrain-on both``: the unlabelled target hospital is seen,
so "unseen" then means "its labels were never used"), then the supervised run starts from those
weights; the table adds the probe on the SimCLR weights alone.

Usage::

    python benchmarks/eval_train_encoder.py [--seeds 3] [--epochs 10] [--size 64]
        [--pretrain-epochs 10 --pretrain-on source|both]
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import stats

from _shared_data import SHARED_DATA
from histoguard.core._image import ResizePolicy, decode_image, resize_tile_images
from histoguard.encoders import EncoderTrainingConfig, get_encoder_info, load_encoder, train_encoder
from histoguard.encoders._training import _normalise
from histoguard.robustness import TileDataset

EBHI_CLASS = {"Normal": "benign", "Polyp": "benign", "Adenocarcinoma": "malignant"}


def _grid_crops(image: np.ndarray, size: int) -> list[np.ndarray]:
    h, w = image.shape[:2]
    rows, cols = h // size, w // size
    top, left = (h - rows * size) // 2, (w - cols * size) // 2
    return [image[top + r * size : top + (r + 1) * size, left + c * size : left + (c + 1) * size]
            for r in range(rows) for c in range(cols)]  # fmt: skip


def load_center(name: str, size: int) -> TileDataset:
    """GlaS or EBHI as in-memory tiles downsized to ``size`` px."""
    tiles, labels, units, names = [], [], [], []
    if name == "GlaS":
        root = SHARED_DATA / "tiles" / "glas"
        with (root / "labels.csv").open(newline="") as handle:
            for r in csv.DictReader(handle):
                for i, crop in enumerate(_grid_crops(decode_image(root / r["path"]), 224)):
                    tiles.append(crop)
                    labels.append(r["label"])
                    units.append(r["patient"])
                    names.append(f"{r['path']}#{i}")
    else:
        root = SHARED_DATA / "tiles" / "ebhi_seg"
        with (root / "labels.csv").open(newline="") as handle:
            for r in csv.DictReader(handle):
                if r["label"] in EBHI_CLASS:
                    tiles.append(decode_image(root / r["path"]))
                    labels.append(EBHI_CLASS[r["label"]])
                    units.append(r["specimen"])
                    names.append(r["path"])
    images = resize_tile_images(np.stack(tiles), size, ResizePolicy())
    return TileDataset(
        paths=np.array(names), label=np.array(labels), center=np.array([name] * len(names)),
        slide_id=np.array(units), images=images,
    )  # fmt: skip


def embed(module: object, tiles: np.ndarray) -> np.ndarray:
    import torch

    info = get_encoder_info("hg-d4")
    with torch.no_grad():
        parts = [module(_normalise(tiles[i : i + 128], info, "cpu"))  # type: ignore[operator]
                 for i in range(0, len(tiles), 128)]  # fmt: skip
    return torch.cat(parts).numpy()


def probe(features: np.ndarray, data: TileDataset) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import GroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y = (data.label == "malignant").astype(np.int64)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
    predicted = cross_val_predict(model, features, y, groups=data.slide_id, cv=GroupKFold(5))
    return float(balanced_accuracy_score(y, predicted))


def interval(values: list[float]) -> str:
    mean = float(np.mean(values))
    if len(values) < 2:
        return f"{mean:.3f}"
    half = stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / np.sqrt(len(values))
    return f"{mean:.3f} [{mean - half:.3f}, {mean + half:.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--direction", choices=("GlaS->EBHI", "EBHI->GlaS", "both"), default="both")
    parser.add_argument("--pretrain-epochs", type=int, default=0, help="SimCLR epochs (0: none)")
    parser.add_argument("--pretrain-on", choices=("source", "both"), default="source")
    args = parser.parse_args()
    centers = {name: load_center(name, args.size) for name in ("GlaS", "EBHI")}
    handcrafted = load_encoder("hg-handcrafted")
    random_init = load_encoder("hg-d4").module
    pretrain = args.pretrain_epochs > 0
    extra = f" SimCLR on {args.pretrain_on} | SimCLR + supervised |" if pretrain else ""
    rule = "|---|---|---|---|" + ("---|---|" if pretrain else "") + "---|"
    print(f"| source -> target | hg-handcrafted | hg-d4 random-init | hg-d4 trained "
          f"({args.seeds} seeds) |{extra} s/epoch |\n{rule}")  # fmt: skip
    directions = [("GlaS", "EBHI"), ("EBHI", "GlaS")]
    if args.direction != "both":
        directions = [tuple(args.direction.split("->"))]  # type: ignore[list-item]
    for source, target in directions:
        test = centers[target]
        base_hand = probe(handcrafted.encode(test.load()), test)
        base_random = probe(embed(random_init, test.load()), test)
        unlabelled = centers[source]
        if args.pretrain_on == "both":
            unlabelled = TileDataset(
                paths=np.concatenate([unlabelled.paths, test.paths]),
                label=np.full(len(unlabelled) + len(test), ""),
                center=np.concatenate([unlabelled.center, test.center]),
                slide_id=np.concatenate([unlabelled.slide_id, test.slide_id]),
                images=np.concatenate([unlabelled.load(), test.load()]),
            )
        scores, ssl_scores, tuned_scores, per_epoch = [], [], [], []
        for seed in range(args.seeds):
            config = EncoderTrainingConfig(
                encoder="hg-d4", epochs=args.epochs, batch_size=32, lr=args.lr,
                tile_size=args.size, val_fraction=0.25, patience=3, seed=seed,
            )  # fmt: skip
            with tempfile.TemporaryDirectory() as out:
                started = time.perf_counter()
                result = train_encoder(centers[source], config, Path(out))
                per_epoch.append((time.perf_counter() - started) / len(result.history))
                scores.append(probe(embed(result.encoder.module, test.load()), test))
                line = (f"  {source}->{target} seed {seed}: {scores[-1]:.3f} (best epoch "
                        f"{result.best_epoch}, source val "
                        f"{result.val_balanced_accuracy:.3f})")  # fmt: skip
                if pretrain:
                    ssl_config = dataclasses.replace(
                        config, objective="simclr", epochs=args.pretrain_epochs, augment=None
                    )
                    ssl = train_encoder(unlabelled, ssl_config, Path(out) / "simclr")
                    ssl_scores.append(probe(embed(ssl.encoder.module, test.load()), test))
                    tuned = train_encoder(
                        centers[source], config, Path(out) / "tuned", weights=ssl.weights
                    )
                    tuned_scores.append(probe(embed(tuned.encoder.module, test.load()), test))
                    line += (f"; SimCLR {ssl_scores[-1]:.3f} (best epoch {ssl.best_epoch}), "
                             f"SimCLR + supervised {tuned_scores[-1]:.3f}")  # fmt: skip
            print(line, flush=True)
        extra = f" {interval(ssl_scores)} | {interval(tuned_scores)} |" if pretrain else ""
        print(f"| {source} -> {target} | {base_hand:.3f} | {base_random:.3f} | "
              f"{interval(scores)} |{extra} {np.mean(per_epoch):.1f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
