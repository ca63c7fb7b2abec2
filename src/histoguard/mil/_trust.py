"""What a trained slide model knows about its own limits, saved beside it.

Fitted on calibration slides that no model of the run trained, stopped early or was tested on
(:func:`~histoguard.mil.hold_out_calibration`):

- a :class:`~histoguard.uncertainty.Calibrator` (temperature or vector scaling of the logits),
  for probabilities that mean what they say;
- a :class:`~histoguard.uncertainty.ConformalClassifier` on the *uncalibrated* probabilities
  (so its guarantee does not depend on a temperature fitted on the same slides; for binary
  tasks and LAC the sets are the same either way), Mondrian by class or by center;
- an :class:`~histoguard.uncertainty.OODGate` on the slides' embeddings (mean and spread of
  their tile features, :func:`~histoguard.uncertainty.slide_embedding`) against the
  training slides, whose conformal p-values flag a slide unlike anything trained on, and a
  batch MMD test against the same reference.

:func:`apply_trust` turns these into one decision per slide: the class, or ``review`` with
the reason. Saved as ``trust.json`` (settings, calibrator, thresholds) plus
``trust.safetensors`` (the gate's arrays), loaded with no pickles.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import numpy.typing as npt

from histoguard._version import __version__
from histoguard.core._atomic import atomic_output, write_bytes_atomic
from histoguard.errors import ConfigError, ModelMismatchError
from histoguard.uncertainty import (
    Calibrator,
    ConformalClassifier,
    MMDResult,
    OODGate,
    min_calibration_size,
    mmd_test,
)
from histoguard.uncertainty._calibration import CalibratorKind
from histoguard.uncertainty._conformal import Score
from histoguard.uncertainty._ood import OODScore

TRUST_NAME = "trust.json"
TRUST_ARRAYS = "trust.safetensors"
_FORMAT = "histoguard.trust"
_VERSION = 1
_GATE_ARRAYS = ("mean", "scale", "reference", "calibration_scores")

Mondrian = Literal["class", "center", "none"]
#: Why a slide is sent to a pathologist, most serious first.
REASONS = ("out-of-distribution", "batch drift", "uncertain")
REVIEW = "review"
#: Fewest slides in a batch for the drift test (the MMD of fewer says nothing).
MIN_DRIFT_BATCH = 5

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, kw_only=True)
class TrustSettings:
    """How calibration, conformal sets and the gate are fitted and applied.

    Attributes:
        alpha: conformal miscoverage; sets hold the true class with probability >= 1 - alpha
            (per class with ``mondrian="class"``, per center with ``"center"``).
        score: conformal score, ``"lac"`` (smallest sets) or ``"aps"`` (adaptive).
        mondrian: ``"class"``, ``"center"`` or ``"none"`` (marginal coverage only).
        calibrator: ``"temperature"`` (one parameter) or ``"vector"`` (2 per class).
        ood_score: gate score in the standardised embedding space: ``"knn-euclidean"`` (mean
            distance to the k nearest training slides), ``"knn"`` (the same in cosine
            distance, blind to a shift along a direction the training slides share) or
            ``"mahalanobis"``.
        ood_k: neighbours for the kNN scores (fewer when there are fewer training slides).
        ood_alpha: a slide with gate p-value <= this is "out of distribution: review"; the
            in-distribution false-alarm rate is at most this.
        drift_alpha: a batch whose MMD p-value against the training slides is <= this is
            "batch drift: review".
    """

    alpha: float = 0.1
    score: Score = "lac"
    mondrian: Mondrian = "class"
    calibrator: CalibratorKind = "temperature"
    ood_score: OODScore = "knn-euclidean"
    ood_k: int = 10
    ood_alpha: float = 0.05
    drift_alpha: float = 0.01

    def __post_init__(self) -> None:
        for name in ("alpha", "ood_alpha", "drift_alpha"):
            value = getattr(self, name)
            if not 0 < value < 1:
                raise ConfigError(f"{name} must be in (0, 1), got {value}")
        choices: dict[str, tuple[str, ...]] = {
            "score": get_args(Score),
            "mondrian": get_args(Mondrian),
            "calibrator": get_args(CalibratorKind),
            "ood_score": get_args(OODScore),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"{name} must be one of {list(allowed)}, got {getattr(self, name)!r}"
                )
        if self.ood_k < 1:
            raise ConfigError(f"ood_k must be >= 1, got {self.ood_k}")


@dataclass(frozen=True, kw_only=True)
class Trust:
    """A model's fitted calibration, conformal thresholds and gate.

    Attributes:
        settings: how they were fitted.
        labels: class names in output order.
        calibrator: maps logits to calibrated logits.
        conformal: thresholds on the uncalibrated probabilities.
        gate: the slide-level OOD gate (on :func:`~histoguard.uncertainty.slide_embedding`).
        calibration_slides: the slides it was fitted on.
        n_reference: training slides in the gate's reference.
        warnings: what limits it (too few calibration slides for a guarantee, ...).
    """

    settings: TrustSettings
    labels: tuple[str, ...]
    calibrator: Calibrator
    conformal: ConformalClassifier
    gate: OODGate
    calibration_slides: tuple[str, ...]
    n_reference: int
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class TrustReading:
    """:func:`apply_trust` for a batch of N slides.

    Attributes:
        probabilities: (N, C) calibrated probabilities.
        sets: (N, C) bool conformal prediction sets.
        ood_p_values: (N,) the gate's conformal p-values.
        drift: the batch MMD test, or None for batches under :data:`MIN_DRIFT_BATCH` slides.
        decisions: per slide, the class name or ``"review"``.
        reasons: per slide, ``""`` or one of :data:`REASONS`.
    """

    probabilities: FloatArray
    sets: npt.NDArray[np.bool_]
    ood_p_values: FloatArray
    drift: MMDResult | None
    decisions: tuple[str, ...]
    reasons: tuple[str, ...]
    notes: tuple[str, ...] = field(default=())


def _softmax(logits: FloatArray) -> FloatArray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    result: FloatArray = e / e.sum(axis=1, keepdims=True)
    return result


def fit_trust(
    logits: npt.ArrayLike,
    labels: npt.ArrayLike,
    embeddings: npt.ArrayLike,
    reference: npt.ArrayLike,
    *,
    class_names: Sequence[str],
    slide_ids: Sequence[str],
    centers: Sequence[str] | None = None,
    settings: TrustSettings | None = None,
) -> Trust:
    """Fit calibration, conformal thresholds and the gate on calibration slides.

    Args:
        logits: (n, C) the model's logits on the calibration slides (for an ensemble, the log
            of the members' mean probability).
        labels: (n,) their class indices.
        embeddings: (n, D) their slide embeddings
            (:func:`~histoguard.uncertainty.slide_embedding`).
        reference: (M, D) embeddings of the training slides, disjoint from the calibration
            slides by patient.
        class_names: C names.
        slide_ids: n calibration slide ids (recorded).
        centers: n centers, needed for ``mondrian="center"``.
        settings: defaults if None.

    Raises:
        ConfigError: shapes that do not fit, or ``mondrian="center"`` without centers.
    """
    settings = settings or TrustSettings()
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    ref = np.asarray(reference, dtype=np.float64)
    if settings.mondrian == "center" and centers is None:
        raise ConfigError("mondrian='center' needs the calibration slides' centers")
    calibrator = Calibrator.fit(z, y, kind=settings.calibrator)
    mondrian = {"class": "class", "center": "group", "none": "none"}[settings.mondrian]
    conformal = ConformalClassifier.fit(
        _softmax(z),
        y,
        groups=list(centers) if settings.mondrian == "center" and centers else None,
        alpha=settings.alpha,
        score=settings.score,
        mondrian=mondrian,  # type: ignore[arg-type]
    )
    gate = OODGate.fit(
        ref, embeddings, score=settings.ood_score, k=min(settings.ood_k, ref.shape[0])
    )
    warnings = []
    n = int(y.size)
    if n < min_calibration_size(settings.alpha):
        warnings.append(
            f"{n} calibration slides are too few for alpha={settings.alpha} (need "
            f"{min_calibration_size(settings.alpha)}): every class stays in every set"
        )
    if conformal.fallback:
        cells = ", ".join(
            class_names[int(c)] if settings.mondrian == "class" else c for c in conformal.fallback
        )
        warnings.append(
            f"too few calibration slides in {cells} for a {settings.mondrian}-wise guarantee "
            f"(need {min_calibration_size(settings.alpha)} each): those use the marginal threshold"
        )
    if 1.0 / (n + 1) > settings.ood_alpha:
        warnings.append(
            f"with {n} calibration slides the gate's smallest p-value is 1/{n + 1} = "
            f"{1 / (n + 1):.3f} > ood_alpha={settings.ood_alpha}: it cannot flag any slide; "
            f"hold out at least {math.ceil(1 / settings.ood_alpha) - 1} calibration slides"
        )
    return Trust(
        settings=settings,
        labels=tuple(class_names),
        calibrator=calibrator,
        conformal=conformal,
        gate=gate,
        calibration_slides=tuple(slide_ids),
        n_reference=int(ref.shape[0]),
        warnings=tuple(warnings),
    )


def batch_drift(trust: Trust, embeddings: npt.ArrayLike, *, seed: int = 0) -> MMDResult | None:
    """MMD test of a batch's slide embeddings (N, D) against the training slides, in the gate's
    standardised space; None when N < :data:`MIN_DRIFT_BATCH`."""
    x = np.asarray(embeddings, dtype=np.float64)
    if x.shape[0] < MIN_DRIFT_BATCH:
        return None
    gate = trust.gate
    return mmd_test(gate.reference, (x - gate.mean) / gate.scale, seed=seed)


def apply_trust(
    trust: Trust,
    logits: npt.ArrayLike,
    embeddings: npt.ArrayLike,
    *,
    centers: Sequence[str] | None = None,
    test_batch: bool = True,
) -> TrustReading:
    """Calibrated probabilities, prediction sets, gate p-values and one decision per slide.

    The decision is ``"review"`` with the first reason that holds: the slide's gate p-value is
    <= ``ood_alpha`` (``out-of-distribution``); the batch differs from the training slides at
    ``drift_alpha`` (``batch drift``); the prediction set is not exactly one class
    (``uncertain``). Otherwise it is the set's one class.

    Args:
        trust: the model's :class:`Trust`.
        logits: (N, C) the model's logits.
        embeddings: (N, D) slide embeddings.
        centers: N centers, for ``mondrian="center"`` (a center without calibration slides
            gets the marginal threshold).
        test_batch: run the batch drift test (N >= :data:`MIN_DRIFT_BATCH`).

    Raises:
        ModelMismatchError: logits or embeddings of another width than the model's.
    """
    z = np.asarray(logits, dtype=np.float64)
    x = np.asarray(embeddings, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] != len(trust.labels):
        raise ModelMismatchError(f"logits {z.shape} do not fit {len(trust.labels)} classes")
    if x.ndim != 2 or x.shape[1] != trust.gate.reference.shape[1]:
        raise ModelMismatchError(
            f"slide embeddings {x.shape} do not fit the gate's "
            f"{trust.gate.reference.shape[1]}-d training features"
        )
    notes = []
    groups = None
    if trust.settings.mondrian == "center":
        if centers is None:
            notes.append("no centers given: the marginal conformal threshold is used")
            groups = ["" for _ in range(z.shape[0])]
        else:
            groups = list(centers)
    sets = trust.conformal.predict_sets(_softmax(z), groups=groups)
    p_values = trust.gate.p_values(x)
    drift = batch_drift(trust, x) if test_batch else None
    drifted = drift is not None and drift.p_value <= trust.settings.drift_alpha
    decisions, reasons = [], []
    for row, p in zip(sets, p_values, strict=True):
        if p <= trust.settings.ood_alpha:
            reason = "out-of-distribution"
        elif drifted:
            reason = "batch drift"
        elif int(row.sum()) != 1:
            reason = "uncertain"
        else:
            reason = ""
        reasons.append(reason)
        decisions.append(REVIEW if reason else trust.labels[int(np.argmax(row))])
    return TrustReading(
        probabilities=trust.calibrator.transform(z),
        sets=sets,
        ood_p_values=p_values,
        drift=drift,
        decisions=tuple(decisions),
        reasons=tuple(reasons),
        notes=tuple(notes),
    )


def save_trust(trust: Trust, directory: Path) -> None:
    """Write ``trust.json`` and ``trust.safetensors`` into ``directory`` (atomically)."""
    from safetensors.numpy import load_file, save_file

    gate = trust.gate.to_dict()
    arrays = {name: np.ascontiguousarray(gate.pop(name), dtype=np.float64) for name in _GATE_ARRAYS}

    def verify(tmp: Path) -> None:
        loaded = load_file(str(tmp))
        if any(not np.array_equal(loaded[k], arrays[k]) for k in arrays):
            raise OSError(f"{directory / TRUST_ARRAYS}: read back differs from the gate")

    directory.mkdir(parents=True, exist_ok=True)
    with atomic_output(directory / TRUST_ARRAYS, verify=verify) as tmp:
        save_file(arrays, str(tmp))
    document = {
        "format": _FORMAT,
        "version": _VERSION,
        "histoguard_version": __version__,
        "settings": asdict(trust.settings),
        "labels": list(trust.labels),
        "calibrator": trust.calibrator.to_dict(),
        "conformal": trust.conformal.to_dict(),
        "gate": gate,
        "calibration_slides": list(trust.calibration_slides),
        "n_reference": trust.n_reference,
        "warnings": list(trust.warnings),
    }
    write_bytes_atomic(directory / TRUST_NAME, (json.dumps(document, indent=1) + "\n").encode())


def load_trust(directory: Path) -> Trust | None:
    """The :class:`Trust` saved in ``directory``, or None when there is none.

    Raises:
        ConfigError: a ``trust.json`` that is not histoguard's or does not parse, naming the
            file and the fix.
    """
    from safetensors.numpy import load_file

    path = directory / TRUST_NAME
    if not path.is_file():
        return None
    try:
        document = json.loads(path.read_text())
        if document.get("format") != _FORMAT or document.get("version") != _VERSION:
            raise ValueError(f"not a {_FORMAT} v{_VERSION} file")
        arrays = load_file(str(directory / TRUST_ARRAYS))
        gate = OODGate.from_dict({**document["gate"], **arrays})
        return Trust(
            settings=TrustSettings(**document["settings"]),
            labels=tuple(document["labels"]),
            calibrator=Calibrator.from_dict(document["calibrator"]),
            conformal=ConformalClassifier.from_dict(document["conformal"]),
            gate=gate,
            calibration_slides=tuple(document["calibration_slides"]),
            n_reference=int(document["n_reference"]),
            warnings=tuple(document.get("warnings", ())),
        )
    except (OSError, ValueError, KeyError, TypeError, ConfigError) as error:
        raise ConfigError(
            f"{path}: cannot be read as the model's calibration ({error}); retrain, or delete "
            f"{TRUST_NAME} and {TRUST_ARRAYS} to predict without calibration"
        ) from None
