"""Issue 10 on the real two-center pair, tile level: a benign / malignant probe calibrated on
GlaS (Coventry) and applied to EBHI (another hospital, scanner and magnification).

Conformal coverage is guaranteed only for cases exchangeable with the calibration ones; the
checks are that the coverage report shows each center's realised coverage, not only the
marginal one, and that the label-free gate flags the EBHI tiles. GlaS is split by patient
(several patients have one class only), EBHI is never used for fitting. Run with ``-s`` to see
the measured table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
import pytest

from histoguard.uncertainty import (
    ConformalClassifier,
    CoverageReport,
    OODGate,
    clopper_pearson,
    conformal_p_values,
    coverage_report,
    mmd_test,
)

from .conftest import COLON_CLASSES, TrustTiles

pytestmark = pytest.mark.usefixtures("one_blas_thread")

SEEDS = 5
ALPHA = 0.1
OOD_ALPHA = 0.05
DRIFT_ALPHA = 0.01
BATCH = 50
#: GlaS patients per part (of 16): train / calibration / test.
PATIENTS = (8, 4, 4)


def _patient_split(
    units: npt.NDArray[np.str_], labels: npt.NDArray[np.int64], rng: np.random.Generator
) -> list[npt.NDArray[np.bool_]]:
    """Train / calibration / test masks over GlaS tiles, by patient, redrawn until the train and
    calibration parts both hold tiles of both classes."""
    patients = np.unique(units)
    while True:
        order = rng.permutation(patients)
        cuts = np.cumsum(PATIENTS)[:-1]
        parts = [np.isin(units, part) for part in np.split(order, cuts)]
        if all(np.unique(labels[part]).size == 2 for part in parts[:2]):
            return parts


@dataclass(frozen=True)
class CenterRun:
    """One seed: the GlaS patient split, the probe's coverage report on GlaS test + EBHI tiles,
    and the gate fitted on GlaS train (reference) and calibration tiles."""

    seed: int
    train: npt.NDArray[np.int64]
    calibration: npt.NDArray[np.int64]
    test: npt.NDArray[np.int64]
    report: CoverageReport
    accuracy: dict[str, float]


@pytest.fixture(scope="module")
def center_runs(trust_tiles: TrustTiles) -> list[CenterRun]:
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):  # see one_blas_thread
        return _center_runs(trust_tiles)


def _center_runs(trust_tiles: TrustTiles) -> list[CenterRun]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    colon = trust_tiles.colon
    glas = colon.centers == "GlaS"
    ebhi = np.flatnonzero(colon.centers == "EBHI")
    x, y = colon.features.astype(np.float64), colon.labels
    runs = []
    for seed in range(SEEDS):
        rng = np.random.default_rng(seed)
        parts = _patient_split(colon.units[glas], y[glas], rng)
        train, cal, test = (np.flatnonzero(glas)[part] for part in parts)
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
        probe.fit(x[train], y[train])
        conformal = ConformalClassifier.fit(
            probe.predict_proba(x[cal]), y[cal], alpha=ALPHA, mondrian="class", seed=seed
        )
        apply_to = np.r_[test, ebhi]
        sets = conformal.predict_sets(probe.predict_proba(x[apply_to]))
        report = coverage_report(
            sets,
            y[apply_to],
            alpha=ALPHA,
            groups=colon.centers[apply_to],
            class_names=COLON_CLASSES,
        )
        accuracy = {
            c: float(np.mean(probe.predict(x[idx]) == y[idx]))
            for c, idx in (("GlaS", test), ("EBHI", ebhi))
        }
        runs.append(CenterRun(seed, train, cal, test, report, accuracy))
    return runs


def _centers(trust_tiles: TrustTiles, run: CenterRun) -> dict[str, npt.NDArray[np.int64]]:
    return {"GlaS": run.test, "EBHI": np.flatnonzero(trust_tiles.colon.centers == "EBHI")}


@pytest.mark.slow
def test_glas_probe_on_ebhi_reports_the_coverage_of_each_center(
    trust_tiles: TrustTiles, center_runs: list[CenterRun]
) -> None:
    print(
        f"\nGlaS-trained benign/malignant probe (hg-cnn tiles; GlaS patients {PATIENTS} train / "
        f"calibration / test), LAC alpha={ALPHA}, Mondrian by class, applied to GlaS test and "
        "EBHI tiles; coverage [95 % Clopper-Pearson] and verdict per center:"
    )
    print(f"{'seed':>4}  {'marginal':>8}  {'GlaS':^36}  {'EBHI':^36}  accuracy GlaS / EBHI")
    for run in center_runs:
        by_center = {row.name: row for row in run.report.per_group}
        # The report must expose each center, whatever the marginal row says.
        assert set(by_center) == {"EBHI", "GlaS"}
        for center, idx in _centers(trust_tiles, run).items():
            assert by_center[center].n == idx.size
        cells = [
            f"{by_center[c].coverage:.3f} [{by_center[c].lower:.3f}, {by_center[c].upper:.3f}] "
            f"{by_center[c].verdict:12}"
            for c in ("GlaS", "EBHI")
        ]
        print(
            f"{run.seed:4}  {run.report.overall.coverage:8.3f}  "
            + "  ".join(cells)
            + f"  {run.accuracy['GlaS']:.3f} / {run.accuracy['EBHI']:.3f}"
        )
    for center in ("GlaS", "EBHI"):
        values = [next(r for r in run.report.per_group if r.name == center) for run in center_runs]
        print(
            f"{center}: mean coverage {np.mean([v.coverage for v in values]):.3f}, "
            f"verdicts {[v.verdict for v in values]}"
        )


@pytest.mark.slow
def test_the_batch_test_flags_an_ebhi_batch(
    trust_tiles: TrustTiles, center_runs: list[CenterRun]
) -> None:
    """MMD of a batch of BATCH tiles against the GlaS reference (gate space), every seed."""
    x = trust_tiles.colon.features.astype(np.float64)
    p_values: dict[str, list[float]] = {"GlaS": [], "EBHI": []}
    for run in center_runs:
        gate = OODGate.fit(x[run.train], x[run.calibration], score="knn", k=10)
        rng = np.random.default_rng([run.seed, BATCH])
        for center, idx in _centers(trust_tiles, run).items():
            batch = x[rng.choice(idx, min(BATCH, idx.size), replace=False)]
            standardised = (batch - gate.mean) / gate.scale
            result = mmd_test(gate.reference, standardised, permutations=200, seed=run.seed)
            p_values[center].append(result.p_value)
    print(
        f"\nMMD p of {BATCH} tiles vs the GlaS training tiles, per seed: "
        + "; ".join(f"{c} {np.round(v, 4).tolist()}" for c, v in p_values.items())
        + " (GlaS test tiles come from other patients than the reference)"
    )
    assert all(p < DRIFT_ALPHA for p in p_values["EBHI"]), p_values["EBHI"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "score",
    [
        pytest.param(
            "knn",
            marks=pytest.mark.xfail(
                strict=True,
                reason="measured: on hg-cnn tile embeddings the kNN cosine score ranks EBHI "
                "tiles no farther from the GlaS reference than GlaS tiles of other patients "
                "(AUROC 0.65-0.89): it flags under 5 % of them",
            ),
        ),
        "knn-euclidean",
        "mahalanobis",
    ],
)
def test_the_tile_gate_flags_ebhi_tiles(
    trust_tiles: TrustTiles,
    center_runs: list[CenterRun],
    score: Literal["knn", "knn-euclidean", "mahalanobis"],
) -> None:
    """Per tile at p <= OOD_ALPHA: the EBHI tiles are flagged far above the false-alarm level
    (the lower end of their Clopper-Pearson interval above OOD_ALPHA), every seed."""
    from sklearn.metrics import roc_auc_score

    x = trust_tiles.colon.features.astype(np.float64)
    rows = []
    for run in center_runs:
        gate = OODGate.fit(x[run.train], x[run.calibration], score=score, k=10)
        idx = _centers(trust_tiles, run)
        scores = {c: gate.scores(x[i]) for c, i in idx.items()}
        flagged = {
            c: conformal_p_values(gate.calibration_scores, v) <= OOD_ALPHA
            for c, v in scores.items()
        }
        inside, outside = scores["GlaS"], scores["EBHI"]
        truth = np.r_[np.zeros(inside.size), np.ones(outside.size)]
        auroc = float(roc_auc_score(truth, np.r_[inside, outside]))
        k = int(flagged["EBHI"].sum())
        rows.append((run.seed, flagged, auroc, clopper_pearson(k, flagged["EBHI"].size)))
    print(f"\ntile gate ({score}), GlaS reference; flagged at p <= {OOD_ALPHA} per seed:")
    for seed, flagged, auroc, (low, high) in rows:
        print(
            f"  seed {seed}: GlaS test {flagged['GlaS'].mean():.3f} (n={flagged['GlaS'].size}), "
            f"EBHI {flagged['EBHI'].mean():.3f} [{low:.3f}, {high:.3f}], AUROC GlaS test vs "
            f"EBHI {auroc:.3f}"
        )
    assert all(low > OOD_ALPHA for _, _, _, (low, _) in rows)
