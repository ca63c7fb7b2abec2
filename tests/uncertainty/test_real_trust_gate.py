"""Issue 10 on real tissue: the label-free slide-level gate.

Reference: the training pseudo-slides of the LC25000 lung models; calibration: the seed's
held-out calibration slides; embeddings: ``slide_embedding`` (mean and standard deviation of
the hg-cnn tile features), as the product computes them. Out-of-distribution: colorectal
pseudo-slides (GlaS and EBHI, another organ and two other centers) and the held-out lung
slides after the strong shifts of ``LUNG_SHIFTS``. The batch test is the product's:
``mmd_test`` in the gate's standardised space. Run with ``-s`` to see the measured tables.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt
import pytest

from histoguard.uncertainty import OODGate, clopper_pearson, mmd_test

from .conftest import LUNG_SHIFTS, SlideRun

pytestmark = pytest.mark.usefixtures("one_blas_thread")

AUROC_TARGET = 0.95
#: The product's per-slide gate level (TrustSettings.ood_alpha) and batch drift level
#: (TrustSettings.drift_alpha).
OOD_ALPHA = 0.05
DRIFT_ALPHA = 0.01
#: Batch sizes tried for the smallest one that detects a shift; the issue allows up to 50. The
#: product does not test batches under 5 slides (MIN_DRIFT_BATCH).
BATCH_SIZES = (5, 10, 20, 30, 40, 50)
#: Random batches per seed and batch size.
BATCHES_PER_SEED = 3
#: In-distribution batches for the false-alarm rate: disjoint batches of this many held-out
#: slides, every held-out slide in at most one batch per seed.
ID_BATCH = 10
#: Enough for p-values down to 1/201 < DRIFT_ALPHA (the product draws 1000).
PERMUTATIONS = 200
#: For the false-alarm batches: p-values down to 1/101, still <= DRIFT_ALPHA; a permutation
#: test with few permutations is as exact, only less powerful.
FALSE_ALARM_PERMUTATIONS = 100
GateScore = Literal["knn-euclidean", "knn", "mahalanobis"]
#: The product's default first (TrustSettings.ood_score).
SCORES: tuple[GateScore, ...] = ("knn-euclidean", "knn", "mahalanobis")


def _gate(run: SlideRun, score: GateScore) -> OODGate:
    calibration = run.held_out[run.calibration]
    return OODGate.fit(run.embeddings[run.train], run.embeddings[calibration], score=score, k=10)


def _id_test(run: SlideRun) -> npt.NDArray[np.float64]:
    """Gate embeddings of the seed's held-out test slides (not the gate's calibration)."""
    return run.embeddings[run.held_out[~run.calibration]]


def _drift_p(
    gate: OODGate, batch: npt.NDArray[np.float64], seed: int, permutations: int = PERMUTATIONS
) -> float:
    """The product's batch drift test: MMD against the reference, standardised as the gate."""
    standardised = (batch - gate.mean) / gate.scale
    return mmd_test(gate.reference, standardised, permutations=permutations, seed=seed).p_value


def _ood_slides(run: SlideRun, *, test_only: bool) -> dict[str, npt.NDArray[np.float64]]:
    """Out-of-distribution slides: colorectal, and the held-out lung slides shifted (only the
    test slides with ``test_only``, else calibration slides too: neither is in the reference)."""
    keep = ~run.calibration if test_only else np.ones(run.held_out.size, dtype=bool)
    out = {"colorectal": run.colon_embeddings}
    out.update({name: run.shifted_embeddings[name][keep] for name, _ in LUNG_SHIFTS})
    return out


@pytest.mark.slow
def test_gate_separates_colorectal_slides(slide_runs: list[SlideRun]) -> None:
    from sklearn.metrics import roc_auc_score

    def auroc(inside: npt.NDArray[np.float64], outside: npt.NDArray[np.float64]) -> float:
        truth = np.r_[np.zeros(inside.size), np.ones(outside.size)]
        return float(roc_auc_score(truth, np.r_[inside, outside]))

    table: dict[str, list[list[float]]] = {score: [] for score in SCORES}
    columns = ["colorectal", "GlaS", "EBHI", *(name for name, _ in LUNG_SHIFTS)]
    for run in slide_runs:
        ood = _ood_slides(run, test_only=True)
        for score in table:
            gate = _gate(run, score)  # type: ignore[arg-type]
            # One scoring call: the Mahalanobis score refits its covariance on every call.
            parts = {"inside": _id_test(run), **ood}
            scored = np.split(
                gate.scores(np.concatenate(list(parts.values()))),
                np.cumsum([v.shape[0] for v in parts.values()])[:-1],
            )
            s = dict(zip(parts, scored, strict=True))
            inside, colon = s["inside"], s["colorectal"]
            row = [auroc(inside, colon)]
            row += [auroc(inside, colon[run.colon.centers == c]) for c in ("GlaS", "EBHI")]
            row += [auroc(inside, s[name]) for name, _ in LUNG_SHIFTS]
            table[score].append(row)
    n_colon = np.mean([r.colon_embeddings.shape[0] for r in slide_runs])
    n_test = np.mean([(~r.calibration).sum() for r in slide_runs])
    print(
        f"\nslide-level OOD AUROC, {n_test:.0f} held-out lung test slides vs {n_colon:.0f} "
        f"colorectal / shifted lung slides per seed; mean [min] over {len(slide_runs)} seeds"
    )
    print(f"{'score':14} " + " ".join(f"{c:>17}" for c in columns))
    for score, rows in table.items():
        values = np.array(rows)
        print(
            f"{score:14} "
            + " ".join(
                f"{m:9.3f} [{lo:.3f}]" for m, lo in zip(values.mean(0), values.min(0), strict=True)
            )
        )
    colorectal = np.array(table[SCORES[0]])[:, 0]  # the product's default score
    assert colorectal.mean() >= AUROC_TARGET, colorectal


def _detection(
    run: SlideRun, batch: npt.NDArray[np.float64], rng: np.random.Generator
) -> dict[int, list[float]]:
    gate = _gate(run, "knn")
    out: dict[int, list[float]] = {}
    for size in BATCH_SIZES:
        out[size] = [
            _drift_p(gate, batch[rng.choice(batch.shape[0], size, replace=False)], run.seed)
            for _ in range(BATCHES_PER_SEED)
        ]
    return out


@pytest.mark.slow
@pytest.mark.parametrize(
    "shift",
    [
        "colorectal",
        # A mean-only embedding missed this one entirely (median p 0.17 at 50 slides): zero-mean
        # per-tile jitter leaves the mean where it was; the spread half of the embedding sees it.
        "hed_jitter",
        "colour_response",
        "stain_transfer_tiatoolbox",
    ],
)
def test_batch_drift_detects_each_shift(slide_runs: list[SlideRun], shift: str) -> None:
    """Every random batch of 50 shifted slides is flagged at p < DRIFT_ALPHA; the table gives the
    detection rate at each batch size and the smallest size at which every batch is flagged."""
    p_values: dict[int, list[float]] = {size: [] for size in BATCH_SIZES}
    for run in slide_runs:
        rng = np.random.default_rng([run.seed, BATCH_SIZES[-1]])
        for size, values in _detection(run, _ood_slides(run, test_only=False)[shift], rng).items():
            p_values[size] += values
    rates = {size: float(np.mean(np.array(v) < DRIFT_ALPHA)) for size, v in p_values.items()}
    smallest = next((size for size in BATCH_SIZES if rates[size] == 1.0), None)
    n = len(slide_runs) * BATCHES_PER_SEED
    print(
        f"\nbatch drift ({shift} vs training slides, knn gate space, {PERMUTATIONS} "
        f"permutations): share of {n} batches with p < {DRIFT_ALPHA}: "
        + ", ".join(f"{size} slides {rate:.2f}" for size, rate in rates.items())
        + f"; median p at 50 slides {np.median(p_values[50]):.4f}; smallest batch size with "
        f"every batch flagged: {smallest}"
    )
    assert rates[BATCH_SIZES[-1]] == 1.0, p_values[BATCH_SIZES[-1]]


@pytest.mark.slow
def test_false_alarms_on_in_distribution_slides_and_batches(slide_runs: list[SlideRun]) -> None:
    """Per slide: gate p-values of held-out test slides at OOD_ALPHA; per batch: the drift test
    on disjoint batches of ID_BATCH held-out slides. Both are exact under exchangeability, so the
    rate is checked for being not significantly above its level (the lower end of its
    Clopper-Pearson interval), and reported."""
    slide_alarms = {score: [0, 0] for score in SCORES}
    batch_p: list[float] = []
    for run in slide_runs:
        for score, counts in slide_alarms.items():
            p = _gate(run, score).p_values(_id_test(run))  # type: ignore[arg-type]
            counts[0] += int(np.sum(p <= OOD_ALPHA))
            counts[1] += p.size
        gate = _gate(run, "knn")
        # Batches of held-out slides, calibration and test alike: neither is in the reference.
        order = np.random.default_rng([run.seed, ID_BATCH]).permutation(run.held_out)
        for start in range(0, order.size - ID_BATCH + 1, ID_BATCH):
            batch = run.embeddings[order[start : start + ID_BATCH]]
            batch_p.append(_drift_p(gate, batch, run.seed + start, FALSE_ALARM_PERMUTATIONS))
    lines = []
    failures: list[tuple[object, ...]] = []
    for score, (k, n) in slide_alarms.items():
        low, high = clopper_pearson(k, n)
        lines.append(
            f"per slide ({score}) at p <= {OOD_ALPHA}: {k}/{n} = {k / n:.3f} "
            f"[{low:.3f}, {high:.3f}]"
        )
        if low > OOD_ALPHA:
            failures.append((score, k, n))
    p = np.array(batch_p)
    for level in (DRIFT_ALPHA, OOD_ALPHA):
        k = int(np.sum(p <= level))
        low, high = clopper_pearson(k, p.size)
        lines.append(
            f"batches of {ID_BATCH} at p <= {level}: {k}/{p.size} = {k / p.size:.3f} "
            f"[{low:.3f}, {high:.3f}]"
        )
        if low > level:
            failures.append(("batch", level, k, p.size))
    print("\nfalse alarms on in-distribution held-out lung slides (95 % Clopper-Pearson):")
    print("\n".join("  " + line for line in lines))
    assert not failures, failures
