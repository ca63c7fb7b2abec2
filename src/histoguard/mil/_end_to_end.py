"""End-to-end training from slide labels: a trainable encoder and a MIL head learned jointly.

Slides come as tile folders (``TILES/<slide_id>/`` holding that slide's tile images) listed in
a cohort table. Every step updates the encoder through a re-sampled subset of a bag's tiles and
encodes the rest without gradient (:mod:`._end_to_end_step`), so memory does not grow with the
bag. The outputs are those of ``train`` for one split - ``fold_<i>/model.safetensors`` +
``model.json`` (``predict`` runs it on features that ``extract --encoder NAME --weights
OUT/encoder.safetensors`` writes), ``predictions.csv``, ``metrics.json``, ``metrics.txt`` - plus
the trained encoder, ``encoder.safetensors`` and its provenance ``encoder.json``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from histoguard.core._atomic import write_bytes_atomic, write_json_atomic
from histoguard.encoders import Encoder, load_encoder
from histoguard.encoders._saving import save_encoder
from histoguard.errors import CohortError, ConfigError, HistoguardError
from histoguard.mil._bags import Bag, predict_bags
from histoguard.mil._base import MILModel, class_balanced_weights
from histoguard.mil._checkpoint import save_model
from histoguard.mil._cohort import Cohort, format_problems, load_cohort
from histoguard.mil._config_checks import check_model_settings
from histoguard.mil._end_to_end_step import (
    BagEncoder,
    StepSettings,
    bag_tiles,
    calibrate_batchnorm,
    train_step,
)
from histoguard.mil._ensemble import fold_dir_name
from histoguard.mil._metrics import format_table, metrics_report
from histoguard.mil._registry import build_model
from histoguard.mil._splits import Split, get_or_create_splits, given_split, kfold_splits
from histoguard.slide import TileFolder

logger = logging.getLogger(__name__)

#: File names of the trained encoder in the output folder.


@dataclass(frozen=True, kw_only=True)
class EndToEndConfig:
    """Everything that decides an end-to-end run; saved as ``config.json``.

    Attributes:
        cohort: table with ``slide_id``, ``label`` and optional ``patient_id``, ``center``,
            ``split`` (see :func:`~histoguard.mil.load_cohort`).
        tiles: folder holding one folder of tile images per ``slide_id``.
        out: output folder.
        encoder: a registered encoder with trainable torch parameters (``hg-d4``, ``hg-cnn``).
        encoder_weights: weights to start from (None: the encoder's seeded random weights).
        allow_pickle: allow a pickled ``encoder_weights`` file.
        model, model_kwargs: the MIL head (registry name and constructor settings).
        split: ``kfold`` (patient-grouped, stratified; one fold is trained) or ``given``
            (the table's ``split`` column).
        k, fold: folds of ``kfold`` and which one to train (its test part is held out).
        epochs: maximum epochs (one step per training bag and epoch).
        patience: stop after this many epochs without a better validation loss.
        lr_encoder, lr_head: AdamW learning rates of the encoder and of the head.
        weight_decay: AdamW weight decay of both.
        seed: seeds initialisation of the head, bag order, tile subsets.
        tiles_with_grad: tiles per step re-encoded with gradient (half top-attended, half
            random); sets the encoder's activation memory.
        max_tiles_per_bag: a random subset of at most this many tiles per training step (None:
            all); validation and test bags always use every tile.
        chunk: tiles per no-gradient encoder batch.
        grad_chunk: tiles per gradient micro-batch (checkpointed one at a time).
        checkpointing: activation checkpointing of the gradient micro-batches.
        amp: bfloat16 autocast on CUDA (ignored on the CPU).
        device: torch device (``cpu``, ``cuda``, ``cuda:1``).
        calibrate_batchnorm: re-estimate the encoder's batch-norm statistics on training tiles
            before training (they then stay frozen; see :mod:`._end_to_end_step`).
        calibration_tiles: tiles drawn over the training bags for that and for the head's
            feature standardisation.
        class_balanced: weight the loss by inverse class frequency of the training slides.
        threshold: decision threshold for sensitivity / specificity (binary tasks).
        n_boot: bootstrap resamples of the metrics' confidence intervals.
    """

    cohort: Path
    tiles: Path
    out: Path
    encoder: str = "hg-d4"
    encoder_weights: Path | None = None
    allow_pickle: bool = False
    model: str = "abmil"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    split: Literal["kfold", "given"] = "kfold"
    k: int = 5
    fold: int = 0
    epochs: int = 10
    patience: int = 3
    lr_encoder: float = 1e-4
    lr_head: float = 2e-4
    weight_decay: float = 1e-4
    seed: int = 0
    tiles_with_grad: int = 32
    max_tiles_per_bag: int | None = None
    chunk: int = 32
    grad_chunk: int = 8
    checkpointing: bool = True
    amp: bool = True
    device: str = "cpu"
    calibrate_batchnorm: bool = True
    calibration_tiles: int = 256
    class_balanced: bool = True
    threshold: float = 0.5
    n_boot: int = 1000

    def __post_init__(self) -> None:
        if self.split not in ("kfold", "given"):
            raise ConfigError(f"split must be 'kfold' or 'given', got {self.split!r}")
        for name, lowest in (
            ("k", 2), ("fold", 0), ("epochs", 1), ("patience", 1), ("tiles_with_grad", 1),
            ("chunk", 1), ("grad_chunk", 1), ("calibration_tiles", 1), ("n_boot", 1),
        ):  # fmt: skip
            if getattr(self, name) < lowest:
                raise ConfigError(f"{name} must be >= {lowest}, got {getattr(self, name)}")
        if self.split == "kfold" and self.fold >= self.k:
            raise ConfigError(f"fold must be in 0..{self.k - 1} for k={self.k}, got {self.fold}")
        if self.max_tiles_per_bag is not None and self.max_tiles_per_bag < 1:
            raise ConfigError(
                f"max_tiles_per_bag must be >= 1 or None, got {self.max_tiles_per_bag}"
            )
        if not (self.lr_encoder > 0 and self.lr_head > 0 and self.weight_decay >= 0):
            raise ConfigError(
                f"need lr_encoder > 0, lr_head > 0 and weight_decay >= 0, got "
                f"{self.lr_encoder}, {self.lr_head}, {self.weight_decay}"
            )
        if not 0 < self.threshold < 1:
            raise ConfigError(f"threshold must be in (0, 1), got {self.threshold}")
        check_model_settings(self.model, self.model_kwargs)

    def step_settings(self) -> StepSettings:
        """The per-step sampling and encoding settings."""
        return StepSettings(
            tiles_with_grad=self.tiles_with_grad,
            max_tiles_per_bag=self.max_tiles_per_bag,
            chunk=self.chunk,
            grad_chunk=self.grad_chunk,
            checkpointing=self.checkpointing,
            amp=self.amp,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible values (paths as strings)."""
        return json.loads(json.dumps(asdict(self), default=str))  # type: ignore[no-any-return]


@dataclass(frozen=True)
class FitHistory:
    """Per-epoch mean training and validation losses, and the epoch whose weights were kept."""

    train_loss: tuple[float, ...]
    val_loss: tuple[float, ...]
    best_epoch: int


@dataclass(frozen=True)
class EndToEndResult:
    """Where the outputs are, the held-out split's metrics report and its text table."""

    out: Path
    model_dir: Path
    encoder_weights: Path
    report: dict[str, Any]
    history: FitHistory
    table: str = ""


def check_trainable(encoder: Encoder) -> None:
    """Refuse an encoder without trainable torch parameters.

    Raises:
        ConfigError: it has none (e.g. ``hg-handcrafted``, an ONNX file).
    """
    if not any(p.requires_grad for p in encoder.module.parameters()):
        raise ConfigError(
            f"encoder {encoder.info.name!r} has no trainable torch parameters; end-to-end "
            "training needs one such as hg-d4 or hg-cnn"
        )


def _calibration_samples(
    folders: Sequence[TileFolder], n_tiles: int, generator: torch.Generator
) -> list[tuple[TileFolder, list[int]]]:
    per_bag = max(1, n_tiles // max(1, len(folders)))
    samples = []
    for folder in folders:
        order = torch.randperm(len(folder), generator=generator)[:per_bag]
        samples.append((folder, sorted(order.tolist())))
    return samples


def _mean_loss(
    bag_encoder: BagEncoder,
    model: MILModel,
    folders: Sequence[TileFolder],
    labels: Sequence[int],
    weights: torch.Tensor | None,
) -> float:
    model.eval()
    total = 0.0
    with torch.no_grad():
        for folder, label in zip(folders, labels, strict=True):
            features = bag_encoder.encode(folder, list(range(len(folder))))
            mask = torch.ones(1, len(features), dtype=torch.bool)
            output = model(features.unsqueeze(0), mask)
            target = torch.tensor([label], device=features.device)
            total += float(model.compute_loss(output, target, class_weights=weights))
    return total / max(1, len(folders))


def fit_end_to_end(
    encoder: Encoder,
    folders: Mapping[str, TileFolder],
    labels: Mapping[str, int],
    split: Split,
    config: EndToEndConfig,
    *,
    n_classes: int,
    on_epoch: Callable[[int, float, float], None] | None = None,
) -> tuple[MILModel, FitHistory]:
    """Train ``encoder`` (in place) and a new MIL head on ``split.train``, early-stopped on
    ``split.val`` (on the training slides when it is empty); the best epoch's weights of both
    are kept.

    Args:
        encoder: a trainable encoder (its module is trained in place, in evaluation mode).
        folders: every slide's tiles by slide id.
        labels: class index by slide id (train and val slides are read).
        split: which slides train and validate.
        config: learning rates, epochs, step settings.
        n_classes: classes C of the head.
        on_epoch: called as ``on_epoch(epoch, train_loss, val_loss)``.

    Returns:
        ``(head in eval mode, history)``.
    """
    check_trainable(encoder)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    bag_encoder = BagEncoder(encoder, config.step_settings())
    train_ids, val_ids = list(split.train), list(split.val) or list(split.train)
    train_folders = [folders[s] for s in train_ids]
    samples = _calibration_samples(train_folders, config.calibration_tiles, generator)
    if config.calibrate_batchnorm:
        calibrate_batchnorm(bag_encoder, samples)
    model = build_model(
        config.model, in_dim=encoder.embed_dim, n_classes=n_classes, **config.model_kwargs
    ).to(encoder.device)
    # Standardised with the starting encoder's statistics, then fixed: encoder and head adapt
    # to one another, and the buffers travel with the saved head.
    model.fit_feature_scaling(torch.cat([bag_encoder.encode(f, i) for f, i in samples]))
    weights = None
    if config.class_balanced:
        train_labels = torch.tensor([labels[s] for s in train_ids])
        weights = class_balanced_weights(train_labels, n_classes).to(encoder.device)
    optimiser = torch.optim.AdamW(
        [
            {"params": [p for p in encoder.module.parameters() if p.requires_grad],
             "lr": config.lr_encoder},
            {"params": list(model.parameters()), "lr": config.lr_head},
        ],
        weight_decay=config.weight_decay,
    )  # fmt: skip
    best = (
        float("inf"),
        copy.deepcopy(encoder.module.state_dict()),
        copy.deepcopy(model.state_dict()),
    )
    best_epoch, stale = -1, 0
    train_history: list[float] = []
    val_history: list[float] = []
    for epoch in range(config.epochs):
        order = torch.randperm(len(train_ids), generator=generator).tolist()
        losses = [
            train_step(
                bag_encoder, model, train_folders[i], labels[train_ids[i]],
                optimiser=optimiser, generator=generator, class_weights=weights,
            ).loss
            for i in order
        ]  # fmt: skip
        val_loss = _mean_loss(
            bag_encoder, model, [folders[s] for s in val_ids], [labels[s] for s in val_ids], weights
        )
        train_history.append(float(np.mean(losses)))
        val_history.append(val_loss)
        logger.info(
            "%s epoch %d/%d: train loss %.4f, validation loss %.4f",
            split.name, epoch + 1, config.epochs, train_history[-1], val_loss,
        )  # fmt: skip
        if on_epoch is not None:
            on_epoch(epoch, train_history[-1], val_loss)
        if val_loss < best[0] - 1e-6:
            best = (val_loss, copy.deepcopy(encoder.module.state_dict()),
                    copy.deepcopy(model.state_dict()))  # fmt: skip
            best_epoch, stale = epoch, 0
        else:
            stale += 1
            if stale >= config.patience:
                break
    encoder.module.load_state_dict(best[1])
    model.load_state_dict(best[2])
    encoder.module.eval()
    history = FitHistory(tuple(train_history), tuple(val_history), best_epoch)
    return model.eval(), history


def open_tile_folders(cohort: Cohort, tiles: Path) -> dict[str, TileFolder]:
    """Each slide's tile folder, ``tiles/<slide_id>/``.

    Raises:
        CohortError: listing every slide whose folder is missing or holds no tile images.
    """
    folders: dict[str, TileFolder] = {}
    problems: list[str] = []
    for row in cohort.rows:
        try:
            folders[row.slide_id] = TileFolder.open(Path(tiles) / row.slide_id)
        except HistoguardError as error:
            problems.append(f"slide {row.slide_id!r}: {error}")
    if problems:
        raise CohortError(
            format_problems(
                f"{tiles}: tile folders of the cohort's slides", problems,
                f"Put each slide's tiles in {tiles}/<slide_id>/ (one folder per slide).",
            ),
            problems,
        )  # fmt: skip
    return folders


def _tiles_digest(folders: Mapping[str, TileFolder]) -> str:
    listing = sorted((slide_id, list(f.names)) for slide_id, f in folders.items())
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()


def _choose_split(out: Path, cohort: Cohort, config: EndToEndConfig) -> tuple[int, Split]:
    def make() -> list[Split]:
        if config.split == "given":
            return given_split(cohort)
        return kfold_splits(cohort, k=config.k, seed=config.seed)

    splits = get_or_create_splits(out / "splits.json", cohort, make)
    index = 0 if config.split == "given" else config.fold
    if index >= len(splits):
        raise ConfigError(f"{out / 'splits.json'}: has {len(splits)} splits, no fold {index}")
    return index, splits[index]


def train_end_to_end(
    config: EndToEndConfig, *, log: Callable[[str], None] | None = None
) -> EndToEndResult:
    """Train an encoder and a MIL head jointly from slide labels on one split, and evaluate
    them on its held-out test slides.

    Writes to ``config.out``: ``config.json``, ``splits.json`` (reused on reruns),
    ``encoder.safetensors`` + ``encoder.json``, ``fold_<i>/model.safetensors`` +
    ``model.json`` (provenance: the encoder, the trained weights' SHA-256, the tile size, so
    ``predict`` accepts features extracted with them), ``predictions.csv``, ``metrics.json``,
    ``metrics.txt``.

    Args:
        config: the run's settings.
        log: called with a line per epoch and at the end.

    Raises:
        CohortError: an invalid cohort table, missing tile folders, splits that would leak.
        ConfigError: an encoder without trainable parameters, an unusable device.
        WeightsError: unreadable starting weights.
        ImageError: a tile that does not decode.
    """
    from histoguard.core._weights import sha256_file

    say = log or (lambda message: None)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "config.json", config.to_dict())
    cohort = load_cohort(Path(config.cohort), require_files=False)
    folders = open_tile_folders(cohort, Path(config.tiles))
    index, split = _choose_split(out, cohort, config)
    encoder = load_encoder(
        config.encoder, weights=config.encoder_weights, allow_pickle=config.allow_pickle,
        device=config.device,
    )  # fmt: skip
    label_of = {row.slide_id: cohort.label_index(row) for row in cohort.rows}
    started = time.perf_counter()
    model, history = fit_end_to_end(
        encoder, folders, label_of, split, config, n_classes=len(cohort.labels),
        on_epoch=lambda e, t, v: say(f"epoch {e + 1}: train loss {t:.4f}, validation loss {v:.4f}"),
    )  # fmt: skip
    seconds = time.perf_counter() - started
    base = Path(config.encoder_weights) if config.encoder_weights is not None else None
    weights = save_encoder(
        encoder,
        out,
        {
            "trained": "end-to-end from slide labels (histoguard train-end-to-end)",
            "base_weights": str(base) if base is not None else "",
            "base_weights_sha256": sha256_file(base) if base is not None and base.is_file() else "",
            "cohort": str(config.cohort),
            "cohort_sha256": cohort.fingerprint(),
            "tiles_sha256": _tiles_digest(folders),
            "labels": list(cohort.labels),
            "split": split.name,
            "train_slides": len(split.train),
            "epochs_run": len(history.train_loss),
            "best_epoch": history.best_epoch + 1,
            "train_seconds": round(seconds, 1),
            "config": config.to_dict(),
        },
    )
    provenance = {
        "encoder": encoder.info.name,
        "weights_sha256": sha256_file(weights),
        "tile_size": encoder.info.input_size,
    }
    model_dir = out / fold_dir_name(index)
    save_model(model.cpu(), model_dir, labels=cohort.labels, provenance=provenance)
    report, table = _evaluate(out, encoder, model, folders, cohort, split, config)
    say(f"{split.name}: trained on {len(split.train)}, tested on {len(split.test)} slides "
        f"({seconds:.1f} s)")  # fmt: skip
    return EndToEndResult(
        out=out, model_dir=model_dir, encoder_weights=weights, report=report, history=history,
        table=table,
    )  # fmt: skip


def _evaluate(
    out: Path,
    encoder: Encoder,
    model: MILModel,
    folders: Mapping[str, TileFolder],
    cohort: Cohort,
    split: Split,
    config: EndToEndConfig,
) -> tuple[dict[str, Any], str]:
    """Predictions and metrics of the held-out test slides (``predictions.csv``,
    ``metrics.json``, ``metrics.txt``)."""
    bag_encoder = BagEncoder(encoder, config.step_settings())
    test_ids = list(split.test)
    bags = []
    for slide_id in test_ids:
        folder = folders[slide_id]
        features = bag_encoder.encode(folder, bag_tiles(folder, config.step_settings(), None))
        bags.append(
            Bag(slide_id, features.cpu(), folder.coords(), center=cohort.row(slide_id).center)
        )
    probs, _ = predict_bags(model.cpu(), bags)
    rows = ["fold,slide_id,center,label," + ",".join(f"p_{label}" for label in cohort.labels)]
    centers = [cohort.row(s).center or "" for s in test_ids]
    for slide_id, center, row_probs in zip(test_ids, centers, probs, strict=True):
        values = ",".join(f"{v:.6f}" for v in row_probs)
        rows.append(f"{split.name},{slide_id},{center},{cohort.row(slide_id).label},{values}")
    write_bytes_atomic(out / "predictions.csv", ("\n".join(rows) + "\n").encode())
    report = metrics_report(
        np.asarray([cohort.label_index(cohort.row(s)) for s in test_ids]),
        probs,
        labels=cohort.labels,
        threshold=config.threshold,
        centers=centers if any(centers) else None,
        folds=[split.name] * len(test_ids),
        n_boot=config.n_boot,
        seed=config.seed,
    )
    report["design"] = f"end-to-end ({config.split})"
    table = format_table(report)
    write_json_atomic(out / "metrics.json", report, default=float)
    write_bytes_atomic(out / "metrics.txt", (table + "\n").encode())
    return report, table
