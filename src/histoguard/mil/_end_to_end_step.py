"""One end-to-end training step: encoder and MIL head updated from one slide label, with memory
that does not grow with the bag.

A bag of N tiles is encoded twice per step:

1. every tile, in chunks, **without gradient** (``torch.no_grad``): an ``(N, D)`` feature
   matrix; nothing of the encoder's activations is kept;
2. the MIL head scores that matrix (no gradient) and its attention picks the **gradient subset**:
   the ``k // 2`` most-attended tiles plus ``k - k // 2`` drawn at random from the rest (the top
   keeps the head learning where it looks, the random half lets tiles it does not yet attend to
   become attended);
3. the subset is re-encoded **with gradient** (optionally in checkpointed micro-batches, so the
   backward pass holds one micro-batch's activations at a time) and spliced into the feature
   matrix (``index_copy``, differentiable in the new rows only);
4. MIL forward, loss, backward through head and encoder.

Only the k subset tiles keep encoder activations, so the encoder's memory is set by
``tiles_with_grad`` (and ``grad_chunk`` with checkpointing), not by N; the ``(N, D)`` matrix
and the head's activations grow with N but are a few hundred bytes per tile.

The encoder runs in evaluation mode throughout (batch-norm statistics frozen after
:func:`calibrate_batchnorm`, dropout off) while its parameters train: a tile then embeds the same
in the no-gradient and the gradient pass and whichever tiles share its chunk, so the spliced
matrix is one consistent function of the weights - the function ``extract`` computes with the
saved weights.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.checkpoint import checkpoint

from histoguard.encoders import Encoder
from histoguard.errors import ImageError
from histoguard.mil._base import MILModel
from histoguard.slide import TileFolder


@dataclass(frozen=True, kw_only=True)
class StepSettings:
    """How one step samples and encodes a bag.

    Attributes:
        tiles_with_grad: k, tiles re-encoded with gradient per step (top-attended half +
            random half); a bag with fewer tiles uses all of them.
        max_tiles_per_bag: a random subset of at most this many tiles per step (None: all).
        chunk: tiles per no-gradient encoder batch (memory of one batch, not of the bag).
        grad_chunk: tiles per gradient micro-batch.
        checkpointing: recompute each gradient micro-batch's activations in the backward pass
            (``torch.utils.checkpoint``) instead of keeping them.
        amp: bfloat16 autocast for encoder and head on CUDA (ignored on the CPU).
    """

    tiles_with_grad: int = 32
    max_tiles_per_bag: int | None = None
    chunk: int = 32
    grad_chunk: int = 8
    checkpointing: bool = True
    amp: bool = True


@dataclass(frozen=True)
class StepStats:
    """What one step did: its loss, the tiles of the bag it used and which got gradients.

    Attributes:
        loss: the MIL loss of the step (float).
        n_tiles: tiles encoded without gradient (the bag, or its per-step subset).
        grad_rows: ``(k,)`` rows of the feature matrix that were re-encoded with gradient.
    """

    loss: float
    n_tiles: int
    grad_rows: np.ndarray


class BagEncoder:
    """Reads a tile folder's tiles as ``extract`` does and encodes them with or without gradient.

    Tiles are decoded and resized straight to the encoder's input size by its own resize policy
    (:meth:`TileFolder.read`), then normalised by :meth:`Encoder.preprocess`: the same pipeline
    as ``extract`` on a tile folder, so features of the trained weights match.

    Args:
        encoder: the encoder being trained; its module stays in evaluation mode.
        settings: chunk sizes, checkpointing and autocast.
    """

    def __init__(self, encoder: Encoder, settings: StepSettings) -> None:
        self.encoder = encoder
        self.settings = settings
        self.module = encoder.module
        self.device = encoder.device

    def autocast(self) -> contextlib.AbstractContextManager[object]:
        """bfloat16 autocast on CUDA when ``amp`` is on, else a no-op."""
        if self.settings.amp and self.device.startswith("cuda"):
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def tiles(self, folder: TileFolder, indices: Sequence[int]) -> torch.Tensor:
        """``(B, 3, S, S)`` normalised tiles on the encoder's device.

        Raises:
            ImageError: a tile does not decode (named, with the reason).
        """
        info = self.encoder.info
        images, failures = folder.read(list(indices), size=info.input_size, resize=info.resize)
        if failures:
            index, message = failures[0]
            raise ImageError(
                folder.path / folder.names[index],
                f"cannot train on this tile ({message})",
                "remove or replace it",
            )
        return self.encoder.preprocess(images).to(self.device)

    def encode(self, folder: TileFolder, indices: Sequence[int]) -> torch.Tensor:
        """``(N, D)`` float32 embeddings of ``indices`` without gradient, in chunks."""
        parts = []
        with torch.no_grad(), self.autocast():
            for start in range(0, len(indices), self.settings.chunk):
                batch = self.tiles(folder, indices[start : start + self.settings.chunk])
                parts.append(self.module(batch).float())
        return torch.cat(parts)

    def encode_with_grad(self, folder: TileFolder, indices: Sequence[int]) -> torch.Tensor:
        """``(k, D)`` float32 embeddings of ``indices`` whose graph reaches the encoder weights.

        With checkpointing each micro-batch keeps only its input tiles and output until the
        backward pass, which recomputes one micro-batch's activations at a time.
        """
        parts = []
        with self.autocast():
            for start in range(0, len(indices), self.settings.grad_chunk):
                batch = self.tiles(folder, indices[start : start + self.settings.grad_chunk])
                if self.settings.checkpointing:
                    out = checkpoint(self.module, batch, use_reentrant=False)
                else:
                    out = self.module(batch)
                parts.append(out.float())
        return torch.cat(parts)


def calibrate_batchnorm(
    bag_encoder: BagEncoder, samples: Sequence[tuple[TileFolder, Sequence[int]]]
) -> int:
    """Re-estimate the encoder's batch-norm statistics on training tiles, then freeze them.

    Random-initialised statistics (mean 0, variance 1) do not describe real activations; the
    cumulative average over ``samples`` (``momentum=None``) does. The module is back in
    evaluation mode afterwards.

    Args:
        samples: ``(folder, tile indices)`` pairs to run through the encoder.

    Returns:
        The number of batch-norm layers re-estimated (0: the encoder has none).
    """
    norms = [
        m
        for m in bag_encoder.module.modules()
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
    ]
    if not norms or not samples:
        return 0
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    bag_encoder.module.train()
    try:
        with torch.no_grad():
            for folder, indices in samples:
                for start in range(0, len(indices), bag_encoder.settings.chunk):
                    chunk = indices[start : start + bag_encoder.settings.chunk]
                    bag_encoder.module(bag_encoder.tiles(folder, chunk))
    finally:
        bag_encoder.module.eval()
        for norm, momentum in zip(norms, momenta, strict=True):
            norm.momentum = momentum
    return len(norms)


def choose_gradient_rows(
    n: int, k: int, generator: torch.Generator, attention: torch.Tensor | None = None
) -> torch.Tensor:
    """The rows to re-encode with gradient: the ``k // 2`` most attended, the rest at random.

    Args:
        n: rows in the bag.
        k: subset size; all n rows when n <= k.
        generator: draws the random part.
        attention: ``(n,)`` attention over the bag's tiles, or None (a head without attention:
            all k at random).

    Returns:
        ``(min(k, n),)`` int64 distinct row indices, sorted.
    """
    if n <= k:
        return torch.arange(n)
    n_top = k // 2 if attention is not None else 0
    top = torch.empty(0, dtype=torch.long)
    if attention is not None and n_top:
        top = torch.topk(attention.detach().float().cpu(), n_top).indices
    rest = torch.ones(n, dtype=torch.bool)
    rest[top] = False
    pool = torch.nonzero(rest).flatten()
    drawn = pool[torch.randperm(len(pool), generator=generator)[: k - n_top]]
    return torch.sort(torch.cat([top, drawn])).values


def bag_tiles(
    folder: TileFolder, settings: StepSettings, generator: torch.Generator | None
) -> list[int]:
    """The tile indices one step uses: all, or a sorted random subset of
    ``max_tiles_per_bag`` (only with a generator: evaluation always uses every tile)."""
    n = len(folder)
    limit = settings.max_tiles_per_bag
    if generator is None or limit is None or n <= limit:
        return list(range(n))
    return sorted(torch.randperm(n, generator=generator)[:limit].tolist())


def _bag(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return features.unsqueeze(0), torch.ones(1, len(features), dtype=torch.bool)


def train_step(
    bag_encoder: BagEncoder,
    model: MILModel,
    folder: TileFolder,
    label: int,
    *,
    optimiser: torch.optim.Optimizer,
    generator: torch.Generator,
    class_weights: torch.Tensor | None = None,
) -> StepStats:
    """One optimiser step on one bag (see the module docstring for the four stages).

    Args:
        bag_encoder: the encoder being trained.
        model: the MIL head (left in training mode).
        folder: the bag's tiles.
        label: its class index.
        optimiser: holds the encoder's and the head's parameters.
        generator: draws the bag's tile subset and the random half of the gradient rows.
        class_weights: ``(C,)`` loss weights, or None.
    """
    settings = bag_encoder.settings
    indices = bag_tiles(folder, settings, generator)
    device = bag_encoder.device
    features = bag_encoder.encode(folder, indices)  # (N, D), no graph
    model.eval()
    with torch.no_grad(), bag_encoder.autocast():
        attention = model(*_bag(features)).attention
    rows = choose_gradient_rows(
        len(indices),
        settings.tiles_with_grad,
        generator,
        attention[0] if attention is not None else None,
    )
    model.train()
    fresh = bag_encoder.encode_with_grad(folder, [indices[int(r)] for r in rows])
    spliced = features.index_copy(0, rows.to(device), fresh)
    target = torch.tensor([label], device=device)
    with bag_encoder.autocast():
        output = model(*_bag(spliced))
    loss = model.compute_loss(output, target, class_weights=class_weights)
    optimiser.zero_grad()
    loss.backward()
    optimiser.step()
    return StepStats(loss=float(loss.detach()), n_tiles=len(indices), grad_rows=rows.numpy())


def bag_features(bag_encoder: BagEncoder, folders: Sequence[TileFolder]) -> Iterator[torch.Tensor]:
    """Each folder's ``(N, D)`` features with every tile, without gradient (evaluation)."""
    for folder in folders:
        yield bag_encoder.encode(folder, list(range(len(folder))))
