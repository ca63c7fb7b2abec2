"""Train an encoder from tile labels: a linear head on the embedding, cross-entropy (optionally
with a center-aware supervised-contrastive term), AdamW, early stopping on slide-grouped
validation, resumable checkpoints. Or, without labels, self-supervised (SimCLR): two augmented
views of each tile pulled together through a projection head, a warm start for the supervised
run or for ``extract`` directly.

What comes out is the encoder's own state dict, ``out/encoder.safetensors``, which
``load_encoder(name, weights=out/"encoder.safetensors")`` and ``histoguard extract --encoder
NAME --weights out/encoder.safetensors`` load unchanged, with ``out/encoder.json`` recording
where it came from. ``hg-d4`` stays exactly D4-invariant: the invariance is in its architecture,
for any weights.

Checkpoints: after every epoch, ``out/checkpoint.safetensors`` (encoder, head and AdamW state)
and ``out/checkpoint.json`` (epoch, best epoch so far, history, config, data hash). A run started
again with ``resume=True`` continues after the last finished epoch and, since every random draw
comes from ``(seed, epoch, batch)``, ends with the weights an uninterrupted run would have.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from histoguard.encoders._registry import Encoder, EncoderInfo, load_encoder
from histoguard.encoders._saving import (
    ENCODER_JSON,
    ENCODER_WEIGHTS,
    module_state,
    save_encoder,
    save_tensors,
)
from histoguard.encoders._training_checkpoint import start_or_resume, write_checkpoint
from histoguard.encoders._training_steps import (
    BatchAugmenter,
    data_sha256,
    default_augmentations,
    projection_head,
    simclr_loss,
    split_by_slide,
    supervised_contrastive_loss,
)
from histoguard.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from histoguard.core._image import ResizePolicy

logger = logging.getLogger(__name__)

#: Tiles embedded at once when validating.
_EVAL_BATCH = 64

#: The ``epoch`` that seeds the validation views of self-supervised training: the same views
#: after every epoch (and after a resume), never one a training batch drew.
_VAL_VIEWS_EPOCH = 2**20

Objective = Literal["supervised", "simclr"]

#: Training tiles (unaugmented) whose batch statistics become batch-norm's running statistics
#: after every epoch.
BN_CALIBRATION_TILES = 512


class TrainingTiles(Protocol):
    """Labelled tiles to train on; :class:`histoguard.robustness.TileDataset` is one.

    Attributes:
        paths, label, center, slide_id: ``(N,)`` string arrays: a name per tile (file path),
            its class, its center, its slide (validation never splits a slide).
    """

    @property
    def paths(self) -> npt.NDArray[np.str_]: ...
    @property
    def label(self) -> npt.NDArray[np.str_]: ...
    @property
    def center(self) -> npt.NDArray[np.str_]: ...
    @property
    def slide_id(self) -> npt.NDArray[np.str_]: ...

    def load(
        self, index: Any = None, *, size: int | None = None, resize: ResizePolicy = ...
    ) -> np.ndarray:
        """Tiles ``index`` as ``(B, size, size, 3)`` uint8 RGB, resized by ``resize``."""
        ...


@dataclass(frozen=True, kw_only=True)
class EncoderTrainingConfig:
    """How to train an encoder from tile labels (or, ``objective="simclr"``, without them).

    Attributes:
        encoder: a registered encoder whose module has trainable torch parameters (``hg-d4``,
            ``hg-cnn``, a timm or torch model); not ``hg-handcrafted``.
        objective: ``"supervised"`` (cross-entropy on the tiles' classes) or ``"simclr"``
            (self-supervised: labels are not read; two augmented views of each tile are the
            positives of the NT-Xent loss on a projection head; early stopping on the
            validation slides' NT-Xent loss).
        epochs: the most passes over the training tiles.
        batch_size: tiles per optimisation step (>= 2: batch-norm needs two).
        lr: AdamW learning rate.
        weight_decay: AdamW decoupled weight decay.
        seed: seeds the split, the head's initialisation, the batch order and the augmentation.
        val_fraction: share of the slides held out to choose the best epoch and stop early (0:
            no validation, the last epoch is kept).
        patience: stop after this many epochs without a better validation balanced accuracy
            (SimCLR: a lower validation loss).
        augment: perturbation chain, ``NAME`` or ``NAME:S`` (each step applied to half the
            tiles, at a severity drawn from 1..S); None: stain, scanner, blur and JPEG (and the
            D4 transforms for encoders not already invariant to them; SimCLR adds a random
            zoom); ``()``: none.
        contrastive_weight: weight of the supervised-contrastive loss whose positives are tiles
            of the same class from another center (0: off). Supervised only.
        temperature: temperature of that loss and of SimCLR's.
        projection_dim: output width of SimCLR's projection head.
        max_tiles: train on at most this many tiles (a seeded random subset); None: all.
        tile_size: side in pixels tiles are trained at; None: the encoder's ``input_size``
            (what ``extract`` feeds it). A smaller size trains faster on a CPU; the weights then
            see another scale at extraction.
        device: torch device.
    """

    encoder: str = "hg-d4"
    objective: Objective = "supervised"
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    val_fraction: float = 0.2
    patience: int = 3
    augment: tuple[str, ...] | None = None
    contrastive_weight: float = 0.0
    temperature: float = 0.1
    projection_dim: int = 128
    max_tiles: int | None = None
    tile_size: int | None = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.batch_size >= 2, "batch_size must be >= 2 (batch-norm needs two tiles)"),
            (self.lr > 0, "lr must be > 0"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (self.seed >= 0, "seed must be >= 0"),
            (0 <= self.val_fraction < 1, "val_fraction must be in [0, 1)"),
            (self.patience >= 1, "patience must be >= 1"),
            (self.contrastive_weight >= 0, "contrastive_weight must be >= 0"),
            (self.temperature > 0, "temperature must be > 0"),
            (self.objective in ("supervised", "simclr"), "objective must be supervised or simclr"),
            (self.projection_dim >= 2, "projection_dim must be >= 2"),
            (
                self.objective == "supervised" or self.contrastive_weight == 0,
                "contrastive_weight needs labels (objective supervised); SimCLR has its own loss",
            ),
            (self.max_tiles is None or self.max_tiles >= 4, "max_tiles must be >= 4"),
            (self.tile_size is None or self.tile_size >= 8, "tile_size must be >= 8 pixels"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"encoder training: {message}")
        if self.augment is not None:
            object.__setattr__(self, "augment", tuple(self.augment))
            BatchAugmenter(self.augment)  # raises ConfigError on a bad spec

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible fields."""
        out = dataclasses.asdict(self)
        out["augment"] = None if self.augment is None else list(self.augment)
        return out


@dataclass(frozen=True, kw_only=True)
class EncoderTrainingResult:
    """What :func:`train_encoder` produced.

    Attributes:
        encoder: the trained encoder (best epoch's weights, evaluation mode).
        weights: ``out/encoder.safetensors``.
        provenance: ``out/encoder.json``.
        best_epoch: the epoch (1-based) whose weights were kept.
        val_balanced_accuracy: the head's balanced accuracy on the validation slides at
            ``best_epoch`` (None without validation, and for SimCLR).
        val_loss: the validation loss at ``best_epoch`` (cross-entropy, or SimCLR's NT-Xent;
            None without validation).
        history: one dict per finished epoch: ``epoch``, ``train_loss``, ``val_loss``,
            ``val_balanced_accuracy``, ``seconds``.
        classes: class names, index order of the head.
    """

    encoder: Encoder
    weights: Path
    provenance: Path
    best_epoch: int
    val_balanced_accuracy: float | None
    val_loss: float | None = None
    history: tuple[dict[str, Any], ...] = field(default_factory=tuple)
    classes: tuple[str, ...] = ()


def _is_d4_invariant(module: torch.nn.Module) -> bool:
    from histoguard.encoders._d4 import D4InvariantCNN

    return isinstance(module, D4InvariantCNN)


def _normalise(tiles: np.ndarray, info: EncoderInfo, device: str) -> torch.Tensor:
    """``(B, S, S, 3)`` uint8 -> ``(B, 3, S, S)`` float32 normalised as the encoder expects."""
    import torch

    batch = torch.from_numpy(np.ascontiguousarray(tiles)).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(info.mean).view(1, 3, 1, 1)
    std = torch.tensor(info.std).view(1, 3, 1, 1)
    return ((batch - mean) / std).to(device)


def _balanced_accuracy(y: np.ndarray, predicted: np.ndarray) -> float:
    recalls = [float((predicted[y == c] == c).mean()) for c in np.unique(y)]
    return float(np.mean(recalls))


def train_encoder(
    tiles: TrainingTiles,
    config: EncoderTrainingConfig,
    out: Path,
    *,
    weights: Path | None = None,
    resume: bool = False,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> EncoderTrainingResult:
    """Train ``config.encoder`` on labelled tiles (or, SimCLR, on any tiles); write its weights
    and provenance to ``out``.

    Args:
        tiles: the labelled tiles (e.g. ``histoguard.robustness.load_class_folders(root)`` or
            ``load_tile_table(table)``); for SimCLR their labels are not read
            (``load_unlabelled_tiles(root)`` reads a folder of images).
        config: how to train.
        out: output folder (``encoder.safetensors``, ``encoder.json``, ``checkpoint.*``).
        weights: initial weights (a file ``load_encoder`` accepts); default the encoder's
            seeded random initialisation.
        resume: continue the run whose checkpoint is in ``out``.
        progress: draw a progress bar over epochs.
        log: called with one line per finished epoch (also logged at INFO).

    Returns:
        The trained encoder and what was written.

    Raises:
        ConfigError: fewer than two classes (supervised), an encoder without trainable
            parameters, too few slides for the validation split, a checkpoint in ``out``
            without ``resume`` or one from another configuration or data set.
        WeightsError, UnknownEncoderError: as :func:`load_encoder`.
    """
    import torch

    from histoguard.core._batch import progress_bars

    started = time.perf_counter()
    say = log or (lambda line: None)
    encoder = load_encoder(config.encoder, weights=weights, device=config.device)
    info, module = encoder.info, encoder.module
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise ConfigError(
            f"encoder {config.encoder!r} has no trainable torch parameters; train a torch "
            "encoder such as hg-d4 or hg-cnn"
        )
    d4_invariant = _is_d4_invariant(module)
    self_supervised = config.objective == "simclr"
    specs = (
        config.augment
        if config.augment is not None
        else default_augmentations(d4_invariant=d4_invariant, self_supervised=self_supervised)
    )
    augmenter = BatchAugmenter(specs)
    size = config.tile_size or info.input_size

    rows = np.arange(len(tiles.paths), dtype=np.int64)
    if config.max_tiles is not None and len(rows) > config.max_tiles:
        rng = np.random.default_rng([config.seed, 1])
        rows = np.sort(rng.choice(rows, size=config.max_tiles, replace=False))
    # SimCLR never reads the labels: one pseudo-class, so the split groups slides only.
    labels_text = np.full(len(rows), "") if self_supervised else tiles.label[rows]
    classes = () if self_supervised else tuple(sorted(set(labels_text.tolist())))
    centers = tuple(sorted(set(tiles.center[rows].tolist())))
    if not self_supervised and len(classes) < 2:
        raise ConfigError(
            f"training an encoder needs tiles of at least two classes, got {list(classes)}"
        )
    y_all = np.searchsorted(np.array(classes or ("",)), labels_text).astype(np.int64)
    c_all = np.searchsorted(np.array(centers), tiles.center[rows]).astype(np.int64)
    if config.contrastive_weight > 0 and len(centers) < 2:
        logger.warning("one center only: the contrastive loss (positives from other centers) is 0")
    train_pos, val_pos = split_by_slide(
        tiles.slide_id[rows], labels_text, val_fraction=config.val_fraction, seed=config.seed
    )
    digest = data_sha256(tiles.paths[rows], labels_text, tiles.center[rows], tiles.slide_id[rows])

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        head = (
            projection_head(info.embed_dim, config.projection_dim)
            if self_supervised
            else torch.nn.Linear(info.embed_dim, len(classes))
        ).to(config.device)
    optimizer = torch.optim.AdamW(
        [*params, *head.parameters()], lr=config.lr, weight_decay=config.weight_decay
    )
    counts = np.bincount(y_all[train_pos], minlength=max(len(classes), 1)).astype(np.float64)
    class_weight = torch.tensor(
        len(train_pos) / (len(counts) * np.maximum(counts, 1)), dtype=torch.float32
    ).to(config.device)

    identity = {"config": config.to_dict(), "data_sha256": digest, "classes": list(classes)}
    state = start_or_resume(out, identity, resume, module, head, optimizer)
    best_state = state.pop("best_state")

    def batches_of(positions: np.ndarray, epoch: int) -> list[np.ndarray]:
        order = np.random.default_rng([config.seed, 2, epoch]).permutation(positions)
        chunks = [order[i : i + config.batch_size] for i in range(0, len(order), config.batch_size)]
        return [c for c in chunks if len(c) >= 2]  # batch-norm cannot train on one tile

    def embed_logits(positions: np.ndarray, augment: bool, epoch: int, batch: int) -> Any:
        pixels = tiles.load(rows[positions], size=size, resize=info.resize)
        if augment:
            pixels = augmenter(pixels, seed=config.seed, epoch=epoch, batch=batch)
        embeddings = module(_normalise(pixels, info, config.device))
        return embeddings, head(embeddings)

    def views_loss(positions: np.ndarray, epoch: int, batch: int) -> Any:
        """SimCLR's loss on two augmented views of the tiles, encoded in one pass (so
        batch-norm sees both)."""
        pixels = tiles.load(rows[positions], size=size, resize=info.resize)
        views = [augmenter(pixels, seed=config.seed, epoch=epoch, batch=2 * batch + v)
                 for v in (0, 1)]  # fmt: skip
        projected = head(module(_normalise(np.concatenate(views), info, config.device)))
        return simclr_loss(*projected.split(len(positions)), temperature=config.temperature)

    history: list[dict[str, Any]] = state["history"]
    # Seeds are set per epoch (so a resumed run matches an uninterrupted one) on a forked RNG,
    # leaving the caller's global random state as it was.
    with progress_bars(progress) as bars, torch.random.fork_rng(devices=[]):
        task = bars.add_task("encoder epochs", total=config.epochs, completed=state["epoch"])
        for epoch in range(state["epoch"], config.epochs):
            if state["since_best"] >= config.patience:
                break
            epoch_started = time.perf_counter()
            torch.manual_seed(config.seed * 100_003 + epoch)
            module.train()
            head.train()
            losses: list[float] = []
            for b, chunk in enumerate(batches_of(train_pos, epoch)):
                if self_supervised:
                    loss = views_loss(chunk, epoch, b)
                else:
                    embeddings, logits = embed_logits(chunk, True, epoch, b)
                    y = torch.from_numpy(y_all[chunk]).to(config.device)
                    loss = torch.nn.functional.cross_entropy(logits, y, weight=class_weight)
                if config.contrastive_weight > 0:
                    centers_t = torch.from_numpy(c_all[chunk]).to(config.device)
                    loss = loss + config.contrastive_weight * supervised_contrastive_loss(
                        embeddings, y, centers_t, temperature=config.temperature
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
            _recalibrate_batch_norm(
                module, lambda chunk: embed_logits(chunk, False, 0, 0), train_pos, epoch, config
            )
            if self_supervised:
                val_loss, val_acc = _validate_views(views_loss, module, head, val_pos), None
            else:
                val_loss, val_acc = _validate(
                    embed_logits, module, head, val_pos, y_all, class_weight
                )
            record = {
                "epoch": epoch + 1,
                "train_loss": float(np.mean(losses)) if losses else float("nan"),
                "val_loss": val_loss,
                "val_balanced_accuracy": val_acc,
                "seconds": round(time.perf_counter() - epoch_started, 3),
            }
            history.append(record)
            better = _improved(state, val_acc, val_loss)
            if better:
                best_state = module_state(module)
                save_tensors(best_state, out / ENCODER_WEIGHTS)
                state.update(best_epoch=epoch + 1, best_acc=val_acc, best_loss=val_loss)
                state["since_best"] = 0
            else:
                state["since_best"] += 1
            state["epoch"] = epoch + 1
            write_checkpoint(out, identity, state, module, head, optimizer)
            line = (
                f"epoch {epoch + 1}/{config.epochs}: train loss {record['train_loss']:.4f}"
                + ("" if val_loss is None else f", val loss {val_loss:.4f}")
                + ("" if val_acc is None else f", val balanced accuracy {val_acc:.3f}")
                + f" ({record['seconds']:.1f} s){' *' if better else ''}"
            )  # fmt: skip
            logger.info("%s", line)
            say(line)
            bars.advance(task)

    module.load_state_dict(best_state)
    module.eval()
    trained = Encoder(info, module, device=config.device)
    provenance = {
        "initial_weights": None if weights is None else str(weights),
        "data": {
            "sha256": digest,
            "hashed": "path, label, center, slide_id of every tile, in order",
            "n_tiles": len(rows),
            "n_train": len(train_pos),
            "n_val": len(val_pos),
            "n_slides": len(set(tiles.slide_id[rows].tolist())),
        },
        "classes": list(classes),
        "class_counts": {c: int((y_all == i).sum()) for i, c in enumerate(classes)},
        "centers": list(centers),
        "augmentation": [str(a) for a in augmenter.chain],
        "d4_invariant": d4_invariant,
        "tile_size": size,
        "config": config.to_dict(),
        "best_epoch": state["best_epoch"],
        "val_balanced_accuracy": state["best_acc"],
        "epochs_run": len(history),
        "stopped_early": len(history) < config.epochs,
        "history": history,
        "seconds": round(time.perf_counter() - started, 1),
        "torch_version": torch.__version__,
    }
    return EncoderTrainingResult(
        encoder=trained,
        weights=save_encoder(trained, out, provenance),
        provenance=out / ENCODER_JSON,
        best_epoch=int(state["best_epoch"]),
        val_balanced_accuracy=state["best_acc"],
        val_loss=state["best_loss"],
        history=tuple(history),
        classes=classes,
    )


def _recalibrate_batch_norm(
    module: torch.nn.Module,
    embed: Callable[[np.ndarray], Any],
    train_pos: np.ndarray,
    epoch: int,
    config: EncoderTrainingConfig,
) -> None:
    """Replace batch-norm running statistics by the exact mean/variance over up to
    :data:`BN_CALIBRATION_TILES` unaugmented training tiles ("precise BN").

    Running averages with momentum 0.1 lag far behind weights that move quickly in a short run,
    and evaluation-mode embeddings (what ``extract`` computes) then drift away from what the head
    was trained on; re-estimating them with the final weights of the epoch removes the lag.
    """
    import torch

    norms = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    rng = np.random.default_rng([config.seed, 3, epoch])
    sample = rng.permutation(train_pos)[:BN_CALIBRATION_TILES]
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the batches below
    module.train()
    with torch.no_grad():
        for i in range(0, len(sample), _EVAL_BATCH):
            chunk = sample[i : i + _EVAL_BATCH]
            if len(chunk) >= 2:
                embed(chunk)
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum


def _improved(state: dict[str, Any], val_acc: float | None, val_loss: float | None) -> bool:
    """Whether this epoch's validation beats the best so far: a higher balanced accuracy (ties
    broken by a lower loss), or, without accuracy (SimCLR), a lower loss; always without
    validation (the last epoch is kept)."""
    if state["best_epoch"] == 0 or val_loss is None:
        return True
    if val_acc is None:
        return bool(val_loss < state["best_loss"] - 1e-12)
    return bool(
        val_acc > state["best_acc"] + 1e-12
        or (val_acc == state["best_acc"] and val_loss < state["best_loss"])
    )


def _validate_views(
    views_loss: Callable[[np.ndarray, int, int], Any],
    module: torch.nn.Module,
    head: torch.nn.Module,
    val_pos: np.ndarray,
) -> float | None:
    """SimCLR's loss on the validation tiles (fixed views, batches of :data:`_EVAL_BATCH`),
    weighted by batch size; None without validation tiles."""
    import torch

    if len(val_pos) < 2:
        return None
    module.eval()
    head.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(val_pos), _EVAL_BATCH):
            chunk = val_pos[i : i + _EVAL_BATCH]
            if len(chunk) >= 2:
                total += float(views_loss(chunk, _VAL_VIEWS_EPOCH, i)) * len(chunk)
                count += len(chunk)
    return total / count if count else None


def _validate(
    embed_logits: Callable[[np.ndarray, bool, int, int], Any],
    module: torch.nn.Module,
    head: torch.nn.Module,
    val_pos: np.ndarray,
    y_all: np.ndarray,
    class_weight: torch.Tensor,
) -> tuple[float | None, float | None]:
    """(weighted cross-entropy, balanced accuracy) of the head on the validation tiles."""
    import torch

    if not len(val_pos):
        return None, None
    module.eval()
    head.eval()
    all_logits = []
    with torch.no_grad():
        for i in range(0, len(val_pos), _EVAL_BATCH):
            _, logits = embed_logits(val_pos[i : i + _EVAL_BATCH], False, 0, 0)
            all_logits.append(logits.float().cpu())
    logits = torch.cat(all_logits)
    y = torch.from_numpy(y_all[val_pos])
    loss = float(torch.nn.functional.cross_entropy(logits, y, weight=class_weight.cpu()))
    predicted = logits.argmax(dim=1).numpy()
    return loss, _balanced_accuracy(y_all[val_pos], predicted)
