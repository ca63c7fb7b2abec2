"""Tiles through an encoder: a :class:`TileDataset` becomes :class:`LabelledEmbeddings`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from histoguard.robustness.data._containers import LabelledEmbeddings, TileDataset

if TYPE_CHECKING:
    from histoguard.encoders import Encoder


def embed_tiles(
    encoder: Encoder, tiles: TileDataset, *, batch_size: int = 64, progress: bool = False
) -> LabelledEmbeddings:
    """Embed every tile of a dataset: ``(N, D)`` float32 with the dataset's metadata.

    Raises:
        AuditDataError: a tile file cannot be read (named in the message).
    """
    from histoguard.core._batch import progress_bars

    chunks = []
    with progress_bars(progress) as bars:
        task = bars.add_task(f"embedding ({encoder.info.name})", total=len(tiles))
        for start in range(0, len(tiles), batch_size):
            index = np.arange(start, min(start + batch_size, len(tiles)))
            chunks.append(encoder.encode(tiles.load_for(encoder.info, index)))
            bars.advance(task, len(index))
    return LabelledEmbeddings(
        embeddings=np.concatenate(chunks),
        label=tiles.label,
        center=tiles.center,
        slide_id=tiles.slide_id,
        item_id=tiles.paths,
    )
