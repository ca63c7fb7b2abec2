"""Issue 10 on real tissue, slide level: conformal coverage per class and calibration (ECE) of
ABMIL models on LC25000 lung pseudo-slides, split by source-image group.

Each of ``SLIDE_SEEDS`` seeds redraws the pseudo-slides, their train / held-out division and the
models (``slide_runs`` in conftest). Run with ``-s`` to see the measured tables.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt
import pytest

from histoguard.uncertainty import (
    Calibrator,
    ConformalClassifier,
    coverage_report,
    ece_bootstrap,
    expected_calibration_error,
)

from .conftest import LUNG_SHIFTS, SLIDE_TASKS, SlideRun

pytestmark = pytest.mark.usefixtures("one_blas_thread")

#: Random calibration / test re-divisions of each seed's held-out slides. The held-out slides
#: are exchangeable, so averaging the coverage over re-divisions estimates the expected
#: coverage of one division without changing it.
REDIVISIONS = 50
ALPHAS = (0.1, 0.05)
SCORES: tuple[Literal["lac", "aps"], ...] = ("lac", "aps")
ECE_TARGET = 0.03


def _halves(labels: npt.NDArray[np.int64], rng: np.random.Generator) -> npt.NDArray[np.bool_]:
    """True for a random half (rounded down) of each class: the calibration part."""
    calibration = np.zeros(labels.size, dtype=bool)
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        calibration[rng.choice(rows, rows.size // 2, replace=False)] = True
    return calibration


def _coverage(
    run: SlideRun, task: str, score: Literal["lac", "aps"], alpha: float
) -> tuple[npt.NDArray[np.float64], float, float]:
    """Per-class coverage, mean set size and review rate, averaged over REDIVISIONS."""
    names = SLIDE_TASKS[task]
    p = run.probabilities[task]
    y = run.labels[task][run.held_out]
    rng = np.random.default_rng(run.seed)
    per_class, sizes, review = [], [], []
    for i in range(REDIVISIONS):
        cal = _halves(y, rng)
        conformal = ConformalClassifier.fit(
            p[cal], y[cal], alpha=alpha, score=score, mondrian="class", seed=i
        )
        sets = conformal.predict_sets(p[~cal])
        report = coverage_report(sets, y[~cal], alpha=alpha, class_names=names)
        per_class.append([row.coverage for row in report.per_class])
        sizes.append(report.overall.mean_set_size)
        review.append(report.overall.review_rate)
    return np.mean(per_class, axis=0), float(np.mean(sizes)), float(np.mean(review))


@pytest.mark.slow
@pytest.mark.parametrize("task", list(SLIDE_TASKS))
def test_conformal_coverage_per_class_on_lung_pseudo_slides(
    slide_runs: list[SlideRun], task: str
) -> None:
    names = SLIDE_TASKS[task]
    accuracy = np.mean(
        [
            np.mean(r.probabilities[task].argmax(axis=1) == r.labels[task][r.held_out])
            for r in slide_runs
        ]
    )
    held_out = np.mean([r.held_out.size for r in slide_runs])
    print(
        f"\n{task} ABMIL on LC25000 pseudo-slides: held-out accuracy {accuracy:.3f} "
        f"(mean of {len(slide_runs)} seeds; {held_out:.0f} held-out slides per seed, halved "
        f"into calibration / test {REDIVISIONS} times); Mondrian by class"
    )
    print(
        f"{'score':5} {'alpha':>5}  "
        + "  ".join(f"{n:>9}" for n in names)
        + "  min seed  size  review"
    )
    failures = []
    for score in SCORES:
        for alpha in ALPHAS:
            results = [_coverage(run, task, score, alpha) for run in slide_runs]
            per_seed = np.array([r[0] for r in results])
            mean = per_seed.mean(axis=0)
            print(
                f"{score:5} {alpha:5.2f}  "
                + "  ".join(f"{v:9.3f}" for v in mean)
                + f"  {per_seed.min():8.3f}  {np.mean([r[1] for r in results]):4.2f}"
                f"  {np.mean([r[2] for r in results]):6.3f}"
            )
            low, high = 1 - alpha - 0.02, 1 - alpha + 0.05
            failures += [
                (score, alpha, name, round(float(v), 4))
                for name, v in zip(names, mean, strict=True)
                if not low <= v <= high
            ]
    assert not failures, (
        f"per-class coverage outside [1 - alpha - 0.02, 1 - alpha + 0.05]: {failures}"
    )


def _logits(probabilities: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Log-probabilities: the logits up to a per-slide constant, which scaling ignores."""
    return np.log(np.clip(probabilities, 1e-38, 1.0))


@pytest.mark.slow
@pytest.mark.parametrize("task", list(SLIDE_TASKS))
def test_ece_after_temperature_scaling_on_lung_pseudo_slides(
    slide_runs: list[SlideRun], task: str
) -> None:
    """Temperature fitted per seed on that seed's calibration slides; ECE (15 equal-width bins)
    on its test slides, pooled over the seeds, with a bootstrap interval; the same calibrated
    models on the same test slides after each lung shift beside it."""
    pooled: dict[str, list[npt.NDArray[np.float64]]] = {"raw": [], "scaled": []}
    pooled.update({name: [] for name, _ in LUNG_SHIFTS})
    labels, per_seed, temperatures = [], [], []
    for run in slide_runs:
        z = _logits(run.probabilities[task])
        y = run.labels[task][run.held_out]
        cal = run.calibration
        calibrator = Calibrator.fit(z[cal], y[cal])
        temperatures.append(calibrator.temperature)
        scaled = calibrator.transform(z[~cal])
        pooled["raw"].append(run.probabilities[task][~cal])
        pooled["scaled"].append(scaled)
        for name, _ in LUNG_SHIFTS:
            shifted = _logits(run.shifted_probabilities[name][task])
            pooled[name].append(calibrator.transform(shifted[~cal]))
        labels.append(y[~cal])
        per_seed.append(expected_calibration_error(scaled, y[~cal]))
    y_all = np.concatenate(labels)
    estimates = {
        key: ece_bootstrap(np.concatenate(value), y_all, n_bootstrap=500, seed=0)
        for key, value in pooled.items()
    }
    accuracy = {
        key: float(np.mean(np.concatenate(value).argmax(axis=1) == y_all))
        for key, value in pooled.items()
    }
    print(
        f"\n{task}: ECE on {y_all.size} test slides ({len(slide_runs)} seeds pooled), "
        f"temperatures {np.round(temperatures, 2).tolist()}, per-seed scaled ECE "
        f"{np.round(per_seed, 3).tolist()}"
    )
    for key, e in estimates.items():
        label = {"raw": "in-distribution, unscaled", "scaled": "in-distribution, scaled"}.get(
            key, f"shifted ({key}), scaled"
        )
        print(
            f"  {label:36} ECE {e.ece:.3f} [{e.low:.3f}, {e.high:.3f}] "
            f"(bootstrap mean {e.bootstrap_mean:.3f}), accuracy {accuracy[key]:.3f}"
        )
    assert estimates["scaled"].ece <= ECE_TARGET, estimates["scaled"]
