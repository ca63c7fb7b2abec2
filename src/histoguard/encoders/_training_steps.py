"""The parts of encoder training that are not the loop: the slide-grouped validation split, the
random augmentation of training batches, the supervised-contrastive and SimCLR losses and the
projection head, the data hash, and the checkpoint's flat tensor state (encoder, head and AdamW
moments in one safetensors file).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from histoguard.augment import Augmentation, get_perturbation, parse_augmentations
from histoguard.errors import ConfigError

if TYPE_CHECKING:
    import torch

#: Stain (HED jitter), scanner (colour response), blur and JPEG: the default training chain.
DEFAULT_AUGMENT: tuple[str, ...] = ("hed_jitter:3", "colour_response:2", "blur:2", "jpeg:2")

#: Mirror, 90° and 180° rotation, each applied with probability 1/2: a uniform draw from D4.
#: Added to the default chain only for encoders that are not already D4-invariant.
D4_AUGMENT: tuple[str, ...] = ("mirror", "rot90", "rot180")

#: Self-supervised (SimCLR) views add a random zoom (a crop resized back, magnification 1.1 to
#: 1.5): without a change of framing two views of a tile differ only in colour and texture noise.
SELF_SUPERVISED_AUGMENT: tuple[str, ...] = ("zoom:3",)

#: Probability that a step of the chain is applied to a tile.
STEP_PROBABILITY = 0.5

IntArray = npt.NDArray[np.int64]


def default_augmentations(*, d4_invariant: bool, self_supervised: bool = False) -> tuple[str, ...]:
    """The default chain: :data:`DEFAULT_AUGMENT`, plus :data:`D4_AUGMENT` unless the encoder is
    exactly invariant to rotations and flips already (``hg-d4``), where D4 would teach nothing,
    plus :data:`SELF_SUPERVISED_AUGMENT` for SimCLR views."""
    chain = DEFAULT_AUGMENT if d4_invariant else DEFAULT_AUGMENT + D4_AUGMENT
    return chain + SELF_SUPERVISED_AUGMENT if self_supervised else chain


def split_by_slide(
    slide_id: npt.NDArray[np.str_],
    label: npt.NDArray[np.str_],
    *,
    val_fraction: float,
    seed: int,
) -> tuple[IntArray, IntArray]:
    """Tile indices ``(train, validation)``, grouped by slide: no slide is in both.

    The validation slides are one fold of a stratified group k-fold with
    ``k = round(1 / val_fraction)`` (scikit-learn's ``StratifiedGroupKFold``, shuffled by
    ``seed``), so each class keeps about its share in both parts (where a class has fewer
    tiles than folds, ``1 / k`` of the slides are held out at random instead).
    ``val_fraction = 0`` gives an empty validation set.

    Raises:
        ConfigError: fewer slides than folds, or a part that ends up empty.
    """
    n = len(slide_id)
    if val_fraction == 0:
        return np.arange(n, dtype=np.int64), np.zeros(0, dtype=np.int64)
    from sklearn.model_selection import StratifiedGroupKFold

    folds = max(2, round(1 / val_fraction))
    n_slides = len(set(slide_id.tolist()))
    if n_slides < folds:
        raise ConfigError(
            f"val_fraction {val_fraction} needs at least {folds} slides to hold some out, but "
            f"the tiles come from {n_slides}; raise val_fraction, pass val_fraction=0 (no early "
            "stopping), or give each tile's slide id"
        )
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    try:
        train, val = next(splitter.split(np.zeros(n), label, groups=slide_id))
    except ValueError:  # a class rarer than the number of folds: hold out slides unstratified
        slides = np.random.default_rng(seed).permutation(np.unique(slide_id))
        held = np.isin(slide_id, slides[: -(-len(slides) // folds)])
        train, val = np.flatnonzero(~held), np.flatnonzero(held)
    if not len(train) or not len(val):
        raise ConfigError("the slide-grouped validation split left one part empty; add slides")
    return np.sort(train).astype(np.int64), np.sort(val).astype(np.int64)


class BatchAugmenter:
    """Random augmentation of training batches from the perturbation registry.

    Each step of the chain (``NAME:S``) is applied to each tile with probability
    :data:`STEP_PROBABILITY`, at a severity drawn uniformly from 1..S: S is the strongest
    change, not the only one. Draws come from ``(seed, epoch, batch)``, so a rerun (or a resumed
    run) sees the same pixels.

    Args:
        specs: ``NAME`` or ``NAME:SEVERITY`` strings (see
            :func:`histoguard.augment.parse_augmentations`).

    Raises:
        ConfigError: a spec that does not parse.
    """

    def __init__(self, specs: Sequence[str]) -> None:
        self.chain: tuple[Augmentation, ...] = parse_augmentations(specs)

    def __call__(self, tiles: np.ndarray, *, seed: int, epoch: int, batch: int) -> np.ndarray:
        """``(B, H, W, 3)`` uint8 -> augmented ``(B, H, W, 3)`` uint8 (a new array)."""
        out = tiles.copy()
        for step, augmentation in enumerate(self.chain):
            rng = np.random.default_rng([seed, epoch, batch, step])
            info = get_perturbation(augmentation.name)
            chosen = rng.random(len(out)) < STEP_PROBABILITY
            severity = rng.integers(1, augmentation.severity + 1, size=len(out))
            step_seed = int(rng.integers(2**31))
            for level in np.unique(severity[chosen]):
                rows = np.flatnonzero(chosen & (severity == level))
                out[rows] = info.apply(out[rows], int(level), seed=step_seed, first_index=0)
        return out


def center_aware_contrastive_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    centers: torch.Tensor,
    *,
    temperature: float,
    same_class_fallback: bool = False,
) -> torch.Tensor | None:
    """Supervised-contrastive loss (Khosla et al. 2020, the L_out form) with center-aware
    positives: the one implementation behind tile-level (encoder) and bag-level (MIL) training.

    The embeddings are L2-normalised; for anchor i, with P(i) its positives,
    ``loss_i = -1/|P(i)| Σ_{p∈P(i)} log(exp(z_i·z_p/τ) / Σ_{a≠i} exp(z_i·z_a/τ))``, averaged
    over the anchors that have positives. P(i): the others with i's label and a known center
    different from i's; with ``same_class_fallback``, when there are none, the others with i's
    label.

    Args:
        embeddings: ``(B, D)`` float.
        labels: ``(B,)`` int64 classes.
        centers: ``(B,)`` int64 center indices, -1 = unknown (never "another center").
        temperature: τ > 0.
        same_class_fallback: see above.

    Returns:
        A scalar, or None when no anchor has a positive.
    """
    import torch
    import torch.nn.functional as F

    z = F.normalize(embeddings, dim=1)
    n = z.shape[0]
    others = ~torch.eye(n, dtype=torch.bool, device=z.device)
    logits = (z @ z.T / temperature).masked_fill(~others, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    same_class = (labels[:, None] == labels[None, :]) & others
    known = centers >= 0
    positives = (
        same_class & (centers[:, None] != centers[None, :]) & known[:, None] & known[None, :]
    )
    if same_class_fallback:
        positives = torch.where(positives.any(dim=1, keepdim=True), positives, same_class)
    counts = positives.sum(dim=1)
    anchors = counts > 0
    if not bool(anchors.any()):
        return None
    picked = torch.where(positives, log_prob, torch.zeros_like(log_prob)).sum(dim=1)
    return -(picked[anchors] / counts[anchors]).mean()


def supervised_contrastive_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    centers: torch.Tensor,
    *,
    temperature: float = 0.1,
) -> torch.Tensor:
    """The tile-level loss: :func:`center_aware_contrastive_loss`, positives strictly the
    batch's other tiles of the same class from *another* center, so the embedding is pulled
    together across hospitals, not within one.

    Args:
        embeddings: ``(B, D)`` float, L2-normalised here.
        labels: ``(B,)`` int64 class indices.
        centers: ``(B,)`` int64 center indices.
        temperature: softmax temperature of the cosine similarities.

    Returns:
        A scalar: the mean over anchors with a positive (0, still in the graph, if none).
    """
    loss = center_aware_contrastive_loss(embeddings, labels, centers, temperature=temperature)
    return embeddings.sum() * 0.0 if loss is None else loss


def simclr_loss(first: torch.Tensor, second: torch.Tensor, *, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent loss (Chen et al. 2020): each tile's two views are each other's only
    positive, every other view in the batch a negative.

    It is :func:`center_aware_contrastive_loss` with the tile as the class and no center, so the
    two contrastive losses share one implementation.

    Args:
        first, second: ``(B, D)`` projections of two augmented views of the same ``B`` tiles.
        temperature: softmax temperature of the cosine similarities.

    Returns:
        A scalar, the mean over all ``2B`` anchors.
    """
    import torch

    n = first.shape[0]
    pairs = torch.arange(n, device=first.device).repeat(2)
    unknown = torch.full_like(pairs, -1)
    loss = center_aware_contrastive_loss(
        torch.cat([first, second]), pairs, unknown, temperature=temperature,
        same_class_fallback=True,
    )  # fmt: skip
    assert loss is not None  # every anchor has its other view
    return loss


def projection_head(embed_dim: int, out_dim: int) -> torch.nn.Module:
    """SimCLR's projection ``Linear(D, D) -> ReLU -> Linear(D, out_dim)``: the loss is taken on
    its output and the encoder's embedding (its input) is what is kept."""
    import torch

    return torch.nn.Sequential(
        torch.nn.Linear(embed_dim, embed_dim), torch.nn.ReLU(), torch.nn.Linear(embed_dim, out_dim)
    )


def data_sha256(
    paths: npt.NDArray[np.str_],
    label: npt.NDArray[np.str_],
    center: npt.NDArray[np.str_],
    slide_id: npt.NDArray[np.str_],
) -> str:
    """Hex SHA-256 over each tile's path, class, center and slide, one tab-separated line per
    tile in order: the same table of tiles gives the same hash (the pixels are not hashed)."""
    digest = hashlib.sha256()
    for row in zip(paths.tolist(), label.tolist(), center.tolist(), slide_id.tolist(), strict=True):
        digest.update(("\t".join(row) + "\n").encode())
    return digest.hexdigest()


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """AdamW's per-parameter state as flat ``optim.<index>.<name>`` tensors (for safetensors)."""
    out: dict[str, torch.Tensor] = {}
    for index, state in optimizer.state_dict()["state"].items():
        for name, value in state.items():
            out[f"optim.{index}.{name}"] = value.detach().clone().contiguous()
    return out


def load_optimizer_tensors(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]
) -> None:
    """Restore the state :func:`optimizer_tensors` flattened, given as ``<index>.<name>``
    tensors (its ``optim.`` prefix removed); the param groups come from the config."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    full = optimizer.state_dict()
    full["state"] = state
    optimizer.load_state_dict(full)


def prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of ``tensors`` under ``prefix.``, with the prefix removed."""
    start = len(prefix) + 1
    return {k[start:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
