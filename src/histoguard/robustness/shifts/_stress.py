"""Stress tests: how an encoder's embeddings and a classifier on them hold up under stain, scanner
and geometric perturbations of increasing severity.

For each perturbation and severity the tiles are perturbed, embedded, and classified, and three
numbers are recorded against the clean tiles: the balanced accuracy (and its drop), the
embedding drift ``mean(1 - cos(clean, perturbed))``, and the fraction of tiles whose predicted
class changed. A perturbation degrades gracefully up to the largest severity at which the
accuracy, at that severity and every lower one, stays within ``tolerance`` of the clean accuracy.

The classifier is a linear probe on tile embeddings (:func:`stress_test`), or a trained MIL
slide model (:func:`stress_slide_model`), whose accuracy and flips are then counted per slide.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from histoguard.augment._registry import PERTURBATIONS
from histoguard.encoders import Encoder
from histoguard.errors import AuditDataError, ConfigError
from histoguard.mil import MILModel
from histoguard.robustness.data._containers import check_tiles
from histoguard.robustness.shifts._perturbations import (
    PerturbationInfo,
    get_perturbation,
    list_perturbations,
    stain_transfer_perturbation,
)

#: ``(N, D)`` tile embeddings -> predicted class names: ``(N,)`` for a probe's ``predict``, one
#: per slide for a slide model.
Classifier = Callable[[np.ndarray], np.ndarray]

# Accuracy drops are differences of ratios: absorb float rounding at exactly the tolerance.
_TOLERANCE_SLACK = 1e-9


@dataclass(frozen=True, kw_only=True, eq=False)
class StressConfig:
    """What a stress test perturbs, and how it judges the result.

    Attributes:
        perturbations: registered perturbation names; None: all registered ones that have at
            least one of ``severities`` (the D4 transforms have only severity 1).
        severities: severities to test, each >= 1 (0 is the clean reference, always computed).
        tolerance: largest absolute drop in balanced accuracy that still counts as graceful.
        batch_size: tiles per encoder call.
        seed: non-negative; seeds every stochastic perturbation.
        references: stain references by name, ``(H, W, 3)`` uint8 RGB H&E images; each adds a
            perturbation ``stain_transfer_{name}``.

    Raises:
        UnknownNameError: an unknown perturbation name.
        AuditDataError: a severity below 1 or above every requested
            perturbation's scale, tolerance outside [0, 1], batch size below 1, negative seed.
    """

    perturbations: tuple[str, ...] | None = None
    severities: tuple[int, ...] = (1, 2, 3, 4, 5)
    tolerance: float = 0.05
    batch_size: int = 64
    seed: int = 0
    references: Mapping[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.severities or min(self.severities) < 1:
            raise ConfigError(
                f"severities must be a non-empty set of integers >= 1, got {self.severities}"
            )
        if not 0 <= self.tolerance <= 1:
            raise ConfigError(f"tolerance is an accuracy drop in [0, 1], got {self.tolerance}")
        if self.batch_size < 1 or self.seed < 0:
            raise ConfigError(
                f"batch_size must be >= 1 and seed >= 0, got {self.batch_size}, {self.seed}"
            )
        object.__setattr__(self, "severities", tuple(sorted(set(self.severities))))
        # A plain dict copy: the caller's mapping may change later; dataclasses.asdict copies it.
        object.__setattr__(self, "references", dict(self.references))
        if self.perturbations is not None:
            object.__setattr__(self, "perturbations", tuple(self.perturbations))
            for name in self.perturbations:
                info = PERTURBATIONS.check(name, field="perturbations")
                if not self._severities_of(info):
                    raise ConfigError(
                        f"perturbation {name!r} has severities 1..{info.max_severity}, none of "
                        f"the requested {self.severities}; add severity 1 or drop it"
                    )

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible settings; references are named, not embedded."""
        return {
            "perturbations": None if self.perturbations is None else list(self.perturbations),
            "severities": list(self.severities),
            "tolerance": self.tolerance,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "references": sorted(self.references),
        }

    def selected(self) -> list[tuple[PerturbationInfo, tuple[int, ...]]]:
        """The perturbations to run, each with the requested severities within its scale.

        Raises:
            AuditDataError: a reference cannot be used for stain transfer.
        """
        infos = (
            list_perturbations()
            if self.perturbations is None
            else [get_perturbation(name) for name in self.perturbations]
        )
        infos += [
            stain_transfer_perturbation(image, name) for name, image in self.references.items()
        ]
        chosen = [(info, self._severities_of(info)) for info in infos]
        return [(info, severities) for info, severities in chosen if severities]

    def _severities_of(self, info: PerturbationInfo) -> tuple[int, ...]:
        return tuple(s for s in self.severities if s <= info.max_severity)


@dataclass(frozen=True, kw_only=True)
class PerturbationOutcome:
    """One perturbation's results, one entry per tested severity (ascending).

    Attributes:
        name, unit: the perturbation and the unit of ``parameter``.
        severities: tested severities.
        parameter: the physical parameter at each severity.
        balanced_accuracy: of the classifier on the perturbed tiles' embeddings.
        accuracy_drop: clean minus perturbed balanced accuracy (positive: worse).
        drift: mean over tiles of 1 - cosine(clean, perturbed embedding), in [0, 2].
        prediction_flip_rate: fraction of tiles whose predicted class changed.
        graceful_severity: see :func:`graceful_severity`.
    """

    name: str
    unit: str
    severities: tuple[int, ...]
    parameter: tuple[float, ...]
    balanced_accuracy: tuple[float, ...]
    accuracy_drop: tuple[float, ...]
    drift: tuple[float, ...]
    prediction_flip_rate: tuple[float, ...]
    graceful_severity: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible values, lists per severity."""
        return {
            "unit": self.unit,
            "severities": list(self.severities),
            "parameter": list(self.parameter),
            "balanced_accuracy": list(self.balanced_accuracy),
            "accuracy_drop": list(self.accuracy_drop),
            "drift": list(self.drift),
            "prediction_flip_rate": list(self.prediction_flip_rate),
            "graceful_severity": self.graceful_severity,
        }


@dataclass(frozen=True, kw_only=True)
class StressResult:
    """A stress test's results.

    Attributes:
        tolerance: the accuracy drop judged graceful.
        clean_balanced_accuracy: of the classifier on the clean tiles.
        perturbations: one outcome per perturbation, in the order run.
        n_tiles: tiles tested.
        parameters: the resolved settings (config, encoder name, tile shape).
    """

    tolerance: float
    clean_balanced_accuracy: float
    perturbations: tuple[PerturbationOutcome, ...]
    n_tiles: int
    parameters: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible summary for audit.json."""
        return {
            "tolerance": self.tolerance,
            "clean": {"balanced_accuracy": self.clean_balanced_accuracy},
            "perturbations": {p.name: p.to_dict() for p in self.perturbations},
            "n_tiles": self.n_tiles,
            "parameters": self.parameters,
        }


def stress_test(
    encoder: Encoder,
    tiles: np.ndarray,
    labels: np.ndarray,
    classify: Classifier,
    *,
    config: StressConfig | None = None,
) -> StressResult:
    """Perturb tiles at each severity, embed them, classify them, and compare with the clean run.

    Args:
        encoder: a loaded encoder; tiles are embedded ``config.batch_size`` at a time.
        tiles: ``(N, H, W, 3)`` uint8 RGB (any size the encoder accepts; it resizes).
        labels: ``(N,)`` true class of each tile.
        classify: ``(N, D)`` float32 embeddings -> ``(N,)`` predicted classes, e.g. a linear
            probe's ``predict`` fitted on clean embeddings of other tiles.
        config: what to perturb; default :class:`StressConfig`.

    Returns:
        A :class:`StressResult`, deterministic given the config's seed. The perturbed tiles do
        not depend on the batch size either; only the encoder's float rounding may.

    Raises:
        AuditDataError: bad tiles or labels, ``classify`` returning the wrong shape, or an
            unusable stain reference.
    """
    config = config or StressConfig()
    check_tiles(tiles)
    return _stress(encoder, tiles, _names(labels, len(tiles), "tile"), classify, config)


def stress_slide_model(
    encoder: Encoder,
    model: MILModel | Sequence[MILModel],
    bags: Sequence[np.ndarray],
    labels: np.ndarray,
    class_names: Sequence[str],
    *,
    config: StressConfig | None = None,
) -> StressResult:
    """The stress test of a slide model: every tile of every slide is perturbed, re-embedded,
    and the model's slide predictions are compared with the true slide labels.

    Accuracy, flip rate and graceful severity are per slide; the drift is per tile embedding.

    Args:
        encoder: the encoder the model was trained on.
        model: a trained MIL model taking this encoder's ``(1, N, D)`` features, or one such
            model per bag (each slide scored by the model that never saw it).
        bags: one ``(N_i, H, W, 3)`` uint8 array of tiles per slide (all the same tile size).
        labels: ``(M,)`` true class of each slide.
        class_names: the model's class names, in output index order.
        config: what to perturb; default :class:`StressConfig`.

    Raises:
        AuditDataError: no bags, an empty bag, bags of different tile sizes, labels not one per
            slide, a label the model does not know, or not one model per bag.
    """
    import torch

    from histoguard.robustness._bag_models import distinct, models_per_bag

    config = config or StressConfig()
    if not bags or any(len(bag) == 0 for bag in bags):
        raise AuditDataError("the slide stress test needs at least one bag, and no empty bag")
    for bag in bags:
        check_tiles(bag)
    if len({bag.shape[1:] for bag in bags}) > 1:
        raise AuditDataError("all bags' tiles must have one size; load them at the encoder size")
    names = _names(labels, len(bags), "slide")
    unknown = sorted(set(names.tolist()) - set(class_names))
    if unknown:
        raise AuditDataError(
            f"slide labels {unknown} are not among the model's classes {list(class_names)}"
        )
    offsets = np.cumsum([len(bag) for bag in bags])[:-1]
    models = models_per_bag(model, len(bags))
    for member in distinct(models):
        member.eval()

    def classify(embeddings: np.ndarray) -> np.ndarray:
        predictions = []
        with torch.inference_mode():
            for scorer, features in zip(models, np.split(embeddings, offsets), strict=True):
                bag = torch.from_numpy(np.ascontiguousarray(features))[None]
                logits = scorer(bag, torch.ones(bag.shape[:2], dtype=torch.bool)).logits
                predictions.append(class_names[int(logits.argmax())])
        return np.array(predictions)

    return _stress(encoder, np.concatenate(bags), names, classify, config)


def _stress(
    encoder: Encoder,
    tiles: np.ndarray,
    labels: np.ndarray,
    classify: Classifier,
    config: StressConfig,
) -> StressResult:
    """The shared run: ``classify`` maps all ``(N, D)`` tile embeddings to one prediction per
    entry of ``labels`` (tiles, or slides)."""
    from sklearn.metrics import balanced_accuracy_score  # scikit-learn loads on first use

    selected = config.selected()
    embeddings = _embed(encoder, tiles, config)
    predictions = _predict(classify, embeddings, len(labels))
    clean = _Clean(
        labels=labels,
        embeddings=embeddings,
        predictions=predictions,
        accuracy=float(balanced_accuracy_score(labels, predictions)),
    )
    outcomes = tuple(
        _run(info, severities, encoder, tiles, classify, clean, config)
        for info, severities in selected
    )
    return StressResult(
        tolerance=config.tolerance,
        clean_balanced_accuracy=clean.accuracy,
        perturbations=outcomes,
        n_tiles=len(tiles),
        parameters={
            **config.to_dict(),
            "encoder": encoder.info.name,
            "tile_shape": list(tiles.shape[1:3]),
            "n_items": len(labels),
        },
    )


def graceful_severity(
    severities: Sequence[int],
    balanced_accuracy: Sequence[float],
    clean_accuracy: float,
    tolerance: float,
) -> int:
    """The largest tested severity up to which the accuracy stays within ``tolerance`` of clean.

    Args:
        severities: tested severities, ascending.
        balanced_accuracy: accuracy at each of them.
        clean_accuracy: accuracy on the clean tiles.
        tolerance: largest acceptable absolute drop.

    Returns:
        The largest ``s`` in ``severities`` such that every tested severity ``<= s`` drops by at
        most ``tolerance``; 0 when the lowest tested severity already drops by more.

    Raises:
        AuditDataError: the sequences differ in length or severities are not ascending.
    """
    if len(severities) != len(balanced_accuracy):
        raise AuditDataError(
            f"{len(severities)} severities but {len(balanced_accuracy)} accuracies; pass one each"
        )
    if list(severities) != sorted(set(severities)):
        raise AuditDataError(f"severities must be strictly ascending, got {list(severities)}")
    graceful = 0
    for severity, accuracy in zip(severities, balanced_accuracy, strict=True):
        if clean_accuracy - accuracy > tolerance + _TOLERANCE_SLACK:
            break
        graceful = severity
    return graceful


def embedding_drift(clean: np.ndarray, perturbed: np.ndarray) -> float:
    """Mean over rows of ``1 - cosine(clean, perturbed)``: ``(N, D)``, ``(N, D)`` -> [0, 2].

    Computed in float64; a zero embedding has cosine 0 with anything.
    """
    a, b = clean.astype(np.float64), perturbed.astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cosine = (a * b).sum(axis=1) / np.maximum(norms, np.finfo(np.float64).tiny)
    return float(np.mean(1.0 - cosine))


def _names(labels: np.ndarray, n: int, item: str) -> np.ndarray:
    """``(n,)`` labels as strings, one per tile or slide."""
    names = np.asarray(labels).astype(str)
    if names.shape != (n,):
        raise AuditDataError(
            f"labels must have one entry per {item} ({n}), got shape {names.shape}"
        )
    return names


def _embed(
    encoder: Encoder,
    tiles: np.ndarray,
    config: StressConfig,
    perturbation: PerturbationInfo | None = None,
    severity: int = 0,
) -> np.ndarray:
    """``(N, D)`` float32 embeddings of the tiles, perturbed at ``severity`` when given."""
    batches = []
    for start in range(0, len(tiles), config.batch_size):
        batch = tiles[start : start + config.batch_size]
        if perturbation is not None:
            batch = perturbation.apply(batch, severity, seed=config.seed, first_index=start)
        batches.append(encoder.encode(batch))
    return np.concatenate(batches)


def _predict(classify: Classifier, embeddings: np.ndarray, n: int) -> np.ndarray:
    predictions = np.asarray(classify(embeddings)).astype(str)
    if predictions.shape != (n,):
        raise AuditDataError(
            f"classify must return one class per item ({n},), got shape "
            f"{predictions.shape}; pass a fitted classifier's predict"
        )
    return predictions


@dataclass(frozen=True, kw_only=True, eq=False)
class _Clean:
    """The reference every perturbed run is compared with: ``(N,)`` labels, ``(N, D)``
    embeddings and ``(N,)`` predictions of the clean tiles, and their balanced accuracy."""

    labels: np.ndarray
    embeddings: np.ndarray
    predictions: np.ndarray
    accuracy: float


def _run(
    info: PerturbationInfo,
    severities: tuple[int, ...],
    encoder: Encoder,
    tiles: np.ndarray,
    classify: Classifier,
    clean: _Clean,
    config: StressConfig,
) -> PerturbationOutcome:
    """One perturbation at each of its severities."""
    from sklearn.metrics import balanced_accuracy_score

    accuracy, drift, flips = [], [], []
    for severity in severities:
        perturbed = _embed(encoder, tiles, config, info, severity)
        predictions = _predict(classify, perturbed, len(clean.labels))
        accuracy.append(float(balanced_accuracy_score(clean.labels, predictions)))
        drift.append(embedding_drift(clean.embeddings, perturbed))
        flips.append(float(np.mean(predictions != clean.predictions)))
    return PerturbationOutcome(
        name=info.name,
        unit=info.unit,
        severities=severities,
        parameter=tuple(info.level(s) for s in severities),
        balanced_accuracy=tuple(accuracy),
        accuracy_drop=tuple(clean.accuracy - a for a in accuracy),
        drift=tuple(drift),
        prediction_flip_rate=tuple(flips),
        graceful_severity=graceful_severity(severities, accuracy, clean.accuracy, config.tolerance),
    )
