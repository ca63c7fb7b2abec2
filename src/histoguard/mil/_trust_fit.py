"""Fitting a run's :class:`~histoguard.mil.Trust` objects during ``train``: one for every model
folder and one for the ensemble, all on the calibration slides, and calibrated readings of each
split's test slides for the train report."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from histoguard.mil._bags import Bag, bag_logits
from histoguard.mil._base import MILModel
from histoguard.mil._cohort import Cohort
from histoguard.mil._evaluate import TrustEvaluation
from histoguard.mil._splits import Split
from histoguard.mil._trust import Trust, TrustSettings, apply_trust, fit_trust, save_trust
from histoguard.uncertainty import slide_embedding


class TrustFitter:
    """Fits and saves the trust of a run's models, and collects test-slide readings.

    Build it with :meth:`for_run`. When the splits hold no calibration slides it does nothing
    (:attr:`enabled` is False) and says why in :attr:`warnings`.
    """

    def __init__(
        self,
        cohort: Cohort,
        bags: Mapping[str, Bag],
        calibration: Sequence[str],
        settings: TrustSettings,
        warnings: Sequence[str] = (),
    ) -> None:
        self.cohort = cohort
        self.bags = bags
        self.calibration = tuple(calibration)
        self.settings = settings
        self.warnings = list(warnings)
        self.enabled = bool(self.calibration)
        held = set(self.calibration)
        self.reference = tuple(s for s in cohort.slide_ids() if s not in held)
        self._embeddings: dict[str, np.ndarray] = {}
        self._fitted: dict[tuple[int, tuple[str, ...], tuple[str, ...]], Trust] = {}
        self._readings: list[TrustEvaluation] = []

    @classmethod
    def for_run(
        cls,
        cohort: Cohort,
        bags: Mapping[str, Bag],
        splits: Sequence[Split],
        settings: TrustSettings,
    ) -> TrustFitter:
        """The fitter for a run's splits (which share one calibration part)."""
        calibration = splits[0].calibration if splits else ()
        warnings = []
        if any(s.calibration != calibration for s in splits):
            warnings.append("splits disagree on their calibration slides: no calibration fitted")
            calibration = ()
        elif not calibration:
            warnings.append(
                "no calibration slides (calibration_fraction=0, a given split without "
                "calibration rows, or splits.json drawn before calibration parts existed): "
                "predictions will carry no calibrated probabilities, prediction sets or "
                "out-of-distribution gate"
            )
        return cls(cohort, bags, calibration, settings, warnings)

    def embeddings(self, slide_ids: Sequence[str]) -> np.ndarray:
        """``(S, 2 D)`` slide embeddings (mean and spread of the tile features), computed once
        per slide."""
        for s in slide_ids:
            if s not in self._embeddings:
                self._embeddings[s] = slide_embedding(self.bags[s].features.numpy())
        return np.stack([self._embeddings[s] for s in slide_ids])

    def fit(
        self,
        model: MILModel,
        *,
        reference: Sequence[str] | None = None,
        without_centers: Sequence[str] = (),
    ) -> Trust:
        """The model's :class:`Trust` on the calibration slides, leaving out those of
        ``without_centers`` (cached per model, reference and exclusion).

        Args:
            model: a fold's model, a split's seed ensemble or the ensemble of all.
            reference: the gate's training slides: those the model trained (and stopped
                early) on; None: every slide outside the calibration part (right for the
                ensemble of all folds, which trained on all of them).
            without_centers: centers whose calibration slides are left out.
        """
        reference = tuple(self.reference if reference is None else reference)
        key = (id(model), reference, tuple(sorted(without_centers)))
        if key not in self._fitted:
            excluded = set(without_centers)
            rows = [self.cohort.row(s) for s in self.calibration]
            rows = [r for r in rows if r.center not in excluded]
            slide_ids = [r.slide_id for r in rows]
            trust = fit_trust(
                bag_logits(model, [self.bags[s] for s in slide_ids]),
                [self.cohort.label_index(r) for r in rows],
                self.embeddings(slide_ids),
                self.embeddings(reference),
                class_names=self.cohort.labels,
                slide_ids=slide_ids,
                centers=[r.center or "" for r in rows],
                settings=self.settings,
            )
            self.warnings.extend(w for w in trust.warnings if w not in self.warnings)
            self._fitted[key] = trust
        return self._fitted[key]

    def fit_and_save(self, model: MILModel, directory: Path, *, split: Split | None = None) -> None:
        """Fit the model's trust and write it into ``directory`` (nothing when disabled).

        Args:
            split: the split the model trained on (its train and val slides are the gate's
                reference); None for the ensemble of every split.
        """
        if self.enabled:
            save_trust(self.fit(model, reference=_trained_on(split)), directory)

    def add_test_predictions(
        self,
        model: MILModel,
        split: Split,
        probabilities: np.ndarray,
        label_of: Mapping[str, int],
        center_of: Mapping[str, str],
    ) -> None:
        """Calibrate one split's test predictions with that split's model's trust, fitted
        without the calibration slides of the split's held-out centers: coverage at a new
        center is then measured with a calibration that never saw it."""
        test_ids = list(split.test)
        if not self.enabled or not test_ids:
            return
        # The test slides must not be in the gate's reference, or each would find itself
        # among its nearest neighbours and look in distribution.
        trust = self.fit(
            model, reference=_trained_on(split), without_centers=split.held_out_centers
        )
        logits = bag_logits(model, [self.bags[s] for s in test_ids])
        centers = [center_of[s] for s in test_ids]
        reading = apply_trust(
            trust, logits, self.embeddings(test_ids), centers=centers, test_batch=False
        )
        self._readings.append(
            TrustEvaluation.from_reading(
                reading,
                trust,
                labels=[label_of[s] for s in test_ids],
                raw_probabilities=probabilities,
                centers=centers,
                slide_ids=test_ids,
            )
        )

    def test_readings(self) -> TrustEvaluation:
        """Every split's test readings, pooled."""
        return TrustEvaluation.concatenate(self._readings)


def _trained_on(split: Split | None) -> tuple[str, ...] | None:
    return None if split is None else (*split.train, *split.val)
