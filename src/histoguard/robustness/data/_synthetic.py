"""Embeddings with a planted center signal of known strength, to check that the metrics measure
what they claim (and for users to calibrate their reading of them)."""

from __future__ import annotations

import numpy as np

from histoguard.robustness.data._containers import LabelledEmbeddings


def planted_embeddings(
    *,
    n_classes: int = 2,
    n_centers: int = 2,
    slides_per_cell: int = 4,
    tiles_per_slide: int = 25,
    dim: int = 64,
    class_strength: float = 1.0,
    center_strength: float = 0.0,
    slide_strength: float = 0.0,
    seed: int = 0,
) -> LabelledEmbeddings:
    """Gaussian embeddings whose class and center are each visible with a known strength.

    Each embedding is ``class_strength * u[class] + center_strength * v[center] +
    slide_strength * w[slide] + noise``, where ``u``, ``v``, ``w`` are random unit vectors and
    the noise is isotropic with expected norm 1. A strength is therefore the distance between
    two group means in units of the noise norm: 0 makes the factor invisible, 2 makes it
    dominate the neighbourhood. Every (class, center) cell holds ``slides_per_cell`` slides of
    ``tiles_per_slide`` embeddings.

    Returns:
        :class:`LabelledEmbeddings` with labels ``class0..``, centers ``center0..``, slide ids
        ``c{class}-m{center}-s{k}``; ``n_classes * n_centers * slides_per_cell *
        tiles_per_slide`` rows of dimension ``dim``.
    """
    rng = np.random.default_rng(seed)

    def unit_vectors(count: int) -> np.ndarray:
        vectors = rng.normal(size=(count, dim))
        unit: np.ndarray = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        return unit

    class_dirs, center_dirs = unit_vectors(n_classes), unit_vectors(n_centers)
    rows, labels, centers, slides = [], [], [], []
    for c in range(n_classes):
        for m in range(n_centers):
            for s in range(slides_per_cell):
                slide_dir = unit_vectors(1)[0]
                noise = rng.normal(scale=1 / np.sqrt(dim), size=(tiles_per_slide, dim))
                rows.append(
                    class_strength * class_dirs[c]
                    + center_strength * center_dirs[m]
                    + slide_strength * slide_dir
                    + noise
                )
                labels += [f"class{c}"] * tiles_per_slide
                centers += [f"center{m}"] * tiles_per_slide
                slides += [f"c{c}-m{m}-s{s}"] * tiles_per_slide
    return LabelledEmbeddings(
        embeddings=np.concatenate(rows).astype(np.float32),
        label=np.array(labels),
        center=np.array(centers),
        slide_id=np.array(slides),
    )
