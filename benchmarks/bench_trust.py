"""Trust step cost per slide: the OOD gate, calibration and conformal sets against their peers,
interleaved in the same run, next to one ABMIL forward pass for scale.

    python benchmarks/bench_trust.py [--tiles 4000] [--dim 1024] [--reference 500]
                                     [--calibration 200] [--batch 200] [--mmd-batch 50]
                                     [--permutations 1000] [--repeats 7]

Peers (not runtime dependencies of histoguard; install them into the same environment to run
this script): scikit-learn (already a dependency) and MAPIE (``pip install mapie``; tested with
1.6.0). Without MAPIE the conformal rows are compared with a plain numpy LAC reference instead.

Synthetic data (the costs depend on the sizes, not on the values): tile features of slides with
``--tiles`` x ``--dim`` float32 features; ``--reference`` training-slide embeddings and
``--calibration`` held-out calibration slides (embeddings for the gate, class probabilities
and labels for the conformal step), embeddings drawn from a rank-32 factor model plus noise.
alpha = 0.1, k = 10 neighbours (the gate's default).

Cases, each timed per call with one slide (what ``predict`` does slide by slide) and, where it
applies, with ``--batch`` slides per call (divided by the batch, per slide):

- ``slide embedding``: :func:`slide_embedding` (mean and standard deviation of the tiles,
  float64) against the same two numpy reductions, concatenated;
- ``gate knn-euclidean`` (the default) / ``gate knn`` / ``gate mahalanobis``:
  :meth:`OODGate.p_values` against the same standardise + distance + conformal p-value done
  with scikit-learn: ``NearestNeighbors`` (Euclidean, or ``metric="cosine"``) fitted once on the
  gate's standardised reference, or a ``LedoitWolf`` covariance fitted once (as the gate does);
  the gate embeddings are 2 x ``--dim`` wide, as ``slide_embedding`` makes them;
- ``calibrate``: :meth:`Calibrator.transform` (temperature) against a numpy softmax(z / T);
- ``sets lac`` / ``sets aps``: :meth:`ConformalClassifier.predict_sets` against MAPIE's
  ``SplitConformalClassifier(prefit=True).predict_set`` on the same probabilities (an identity
  "classifier" hands MAPIE the probabilities; MAPIE refuses APS for two classes, so that row
  has no peer); histoguard's APS is randomised (its default),
  MAPIE's is not (``include_last_label=True``), so only the LAC sets are compared for parity;
- ``mmd batch``: :func:`mmd_test` of ``--mmd-batch`` slides against the reference, no peer;
- ``abmil forward``: ``build_model("abmil", in_dim=D, n_classes=2).predict`` on one bag, and
  the same model on the slide's tiles as one-tile bags (the per-tile uncertainty), no peer.

``ratio`` = histoguard time / peer time (below 1: histoguard is faster). Medians of
``--repeats`` interleaved rounds (histoguard and peer alternate which runs first).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import sklearn
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.covariance import LedoitWolf
from sklearn.neighbors import NearestNeighbors

from histoguard.mil import build_model
from histoguard.uncertainty import (
    Calibrator,
    ConformalClassifier,
    OODGate,
    mmd_test,
    slide_embedding,
)

try:
    import mapie
    from mapie.classification import SplitConformalClassifier
except ImportError:  # the numpy LAC reference stands in
    mapie = None

ALPHA = 0.1
K = 10
TARGET_S = 0.05  # each timed measurement runs about this long


@dataclass
class Case:
    """One row: histoguard's call, the peer's call (or None), and slides per call."""

    name: str
    slides: int
    ours: Callable[[], object]
    peer_name: str = "-"
    peer: Callable[[], object] | None = None


def per_call(run: Callable[[], object], calls: int) -> float:
    """Seconds per call, over ``calls`` consecutive calls."""
    started = time.perf_counter()
    for _ in range(calls):
        run()
    return (time.perf_counter() - started) / calls


def calls_for(run: Callable[[], object]) -> int:
    """How many calls make one measurement of about TARGET_S (after a warm-up call)."""
    run()
    return max(1, round(TARGET_S / max(per_call(run, 1), 1e-7)))


def embeddings(rng: np.random.Generator, n: int, basis: np.ndarray) -> np.ndarray:
    """(n, D) slide embeddings: a rank-32 factor model plus isotropic noise."""
    return rng.normal(size=(n, basis.shape[0])) @ basis + 0.5 * rng.normal(size=(n, basis.shape[1]))


def probabilities(rng: np.random.Generator, n: int, c: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, C) softmax probabilities of a noisy model and the (n,) true labels."""
    labels = rng.integers(0, c, size=n)
    logits = rng.normal(size=(n, c)) + 1.5 * np.eye(c)[labels]
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True), labels


class _Identity(ClassifierMixin, BaseEstimator):
    """A fitted "classifier" whose probabilities are its input, so MAPIE sees ours."""

    def __init__(self, n_classes: int = 2) -> None:
        self.n_classes = n_classes
        self.classes_ = np.arange(n_classes)

    def fit(self, x: Any, y: Any) -> _Identity:
        return self

    def predict_proba(self, x: Any) -> np.ndarray:
        return np.asarray(x, dtype=np.float64)

    def predict(self, x: Any) -> np.ndarray:
        return np.asarray(np.argmax(x, axis=1))


def numpy_lac(cal_p: np.ndarray, cal_y: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """The plain split-conformal LAC rule: keep classes with 1 - p <= the conformal quantile."""
    scores = np.sort(1.0 - cal_p[np.arange(cal_y.size), cal_y])
    rank = int(np.ceil((scores.size + 1) * (1 - ALPHA)))
    q = scores[rank - 1] if rank <= scores.size else np.inf
    return lambda p: (1.0 - p) <= q


def sklearn_gate(
    gate: OODGate, score: str, calibration: np.ndarray
) -> Callable[[np.ndarray], np.ndarray]:
    """The gate's p-values with scikit-learn doing the distances, fitted once."""
    if score in ("knn", "knn-euclidean"):
        metric = "cosine" if score == "knn" else "euclidean"
        index = NearestNeighbors(n_neighbors=gate.k, metric=metric).fit(gate.reference)
        # histoguard's Euclidean kNN distance is divided by sqrt(D)
        unit = 1.0 if score == "knn" else np.sqrt(gate.reference.shape[1])

        def distance(x: np.ndarray) -> np.ndarray:
            return np.asarray(index.kneighbors(x)[0].mean(axis=1)) / unit

    else:
        covariance = LedoitWolf().fit(gate.reference)

        def distance(x: np.ndarray) -> np.ndarray:
            return np.sqrt(np.maximum(covariance.mahalanobis(x), 0.0))

    cal = distance((calibration - gate.mean) / gate.scale)
    ordered = np.sort(cal)

    def p_values(x: np.ndarray) -> np.ndarray:
        s = distance((x - gate.mean) / gate.scale)
        return (1.0 + cal.size - np.searchsorted(ordered, s, side="left")) / (cal.size + 1.0)

    return p_values


def gate_cases(
    reference: np.ndarray, calibration: np.ndarray, slides: list[np.ndarray], parity: list[str]
) -> list[Case]:
    """The OOD gate's p-values (kNN and Mahalanobis) against the scikit-learn peers."""
    cases = []
    scores = (
        ("knn-euclidean", "sklearn NearestNeighbors"),
        ("knn", "sklearn NearestNeighbors"),
        ("mahalanobis", "sklearn LW"),
    )
    for score, peer_name in scores:
        gate = OODGate.fit(reference, calibration, score=score, k=K)
        peer = sklearn_gate(gate, score, calibration)
        for x in slides:
            cases.append(
                Case(
                    f"gate {score}",
                    len(x),
                    lambda g=gate, x=x: g.p_values(x),
                    peer_name,
                    lambda p=peer, x=x: p(x),
                )
            )
        batch = slides[-1]
        same = np.mean(gate.p_values(batch) == peer(batch))
        line = f"gate {score} vs {peer_name}: p-values equal for {same:.0%} of {len(batch)} slides"
        if score != "mahalanobis":
            metric = "cosine" if score == "knn" else "euclidean"
            unit = 1.0 if score == "knn" else np.sqrt(gate.reference.shape[1])
            index = NearestNeighbors(n_neighbors=K, metric=metric).fit(gate.reference)
            ref_d = index.kneighbors((batch - gate.mean) / gate.scale)[0].mean(axis=1) / unit
            line += f", max |distance diff| {np.max(np.abs(gate.scores(batch) - ref_d)):.1e}"
        parity.append(line)
    return cases


def calibration_cases(rng: np.random.Generator, n: int, batch: int) -> list[Case]:
    """Temperature scaling of two-class logits against a numpy softmax(z / T)."""
    logits = rng.normal(size=(n, 2)) * 3.0
    labels = (logits[:, 1] + rng.normal(size=n) > logits[:, 0]).astype(np.int64)
    calibrator = Calibrator.fit(logits, labels)
    temperature = calibrator.temperature
    test = rng.normal(size=(batch, 2)) * 3.0
    return [
        Case(
            "calibrate (temperature)",
            len(x),
            lambda x=x: calibrator.transform(x),
            "numpy softmax",
            lambda x=x: _softmax(x / temperature),
        )
        for x in (test[:1], test)
    ]


def conformal_peer(
    cal_p: np.ndarray, cal_y: np.ndarray, score: str
) -> tuple[str, Callable[[np.ndarray], np.ndarray] | None]:
    """MAPIE's split-conformal sets on the same calibration, else the numpy LAC rule."""
    c = cal_p.shape[1]
    if mapie is not None and (score == "lac" or c > 2):  # MAPIE: binary targets are LAC only
        model = SplitConformalClassifier(
            _Identity(c), confidence_level=1 - ALPHA, conformity_score=score, prefit=True
        ).conformalize(cal_p, cal_y)
        return f"MAPIE {score}", lambda p: model.predict_set(p)[1][:, :, 0]
    if score == "lac":
        return "numpy LAC", numpy_lac(cal_p, cal_y)
    return "-", None


def conformal_cases(rng: np.random.Generator, n: int, batch: int, parity: list[str]) -> list[Case]:
    """Prediction sets (LAC, APS; two and three classes) against MAPIE."""
    cases = []
    for c in (2, 3):
        cal_p, cal_y = probabilities(rng, n, c)
        test_p, _ = probabilities(rng, batch, c)
        for score in ("lac", "aps"):
            ours = ConformalClassifier.fit(cal_p, cal_y, alpha=ALPHA, score=score)
            peer_name, peer = conformal_peer(cal_p, cal_y, score)
            for x in (test_p[:1], test_p):
                cases.append(
                    Case(
                        f"sets {score}, C={c}",
                        len(x),
                        lambda m=ours, x=x: m.predict_sets(x),
                        peer_name,
                        None if peer is None else lambda f=peer, x=x: f(x),
                    )
                )
            if score == "lac":
                sets = ours.predict_sets(test_p)
                for name, rule in ((peer_name, peer), ("numpy LAC", numpy_lac(cal_p, cal_y))):
                    assert rule is not None
                    same = np.all(sets == rule(test_p), axis=1).mean()
                    parity.append(
                        f"sets lac, C={c} vs {name}: identical sets for {same:.0%} of "
                        f"{len(test_p)} slides"
                    )
    return cases


def timed(cases: list[Case], repeats: int) -> list[tuple[float, float | None]]:
    """(histoguard, peer) median seconds per slide of each case, interleaved rounds."""
    calls = [(calls_for(c.ours), calls_for(c.peer) if c.peer else 0) for c in cases]
    ours: list[list[float]] = [[] for _ in cases]
    peers: list[list[float]] = [[] for _ in cases]
    for r in range(repeats):
        for i, case in enumerate(cases):
            runs = [(ours[i], case.ours, calls[i][0])]
            if case.peer is not None:
                runs.append((peers[i], case.peer, calls[i][1]))
            for out, run, n in runs[:: 1 if r % 2 == 0 else -1]:
                out.append(per_call(run, n) / case.slides)
    return [
        (statistics.median(o), statistics.median(p) if p else None)
        for o, p in zip(ours, peers, strict=True)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiles", type=int, default=4000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--reference", type=int, default=500)
    parser.add_argument("--calibration", type=int, default=200)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--mmd-batch", type=int, default=50)
    parser.add_argument("--permutations", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--folds", type=int, default=5, help="ensemble size for the summary")
    args = parser.parse_args()
    rng = np.random.default_rng(10)
    d = args.dim
    basis = rng.normal(size=(32, 2 * d)) / np.sqrt(32)  # gate embeddings: mean and spread
    reference = embeddings(rng, args.reference, basis)
    calibration = embeddings(rng, args.calibration, basis)
    batch = embeddings(rng, args.batch, basis)
    tiles = (rng.normal(size=(args.tiles, d)) + batch[:1, :d]).astype(np.float32)
    print(
        f"{args.tiles} tiles x {d} float32 per slide, reference {args.reference}, calibration "
        f"{args.calibration}, batch {args.batch}; {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, numpy {np.__version__}, scikit-learn "
        f"{sklearn.__version__}, MAPIE {mapie.__version__ if mapie else 'not installed'}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads); alpha {ALPHA}, "
        f"k {K}, median of {args.repeats} rounds"
    )

    def numpy_embedding() -> np.ndarray:
        return np.concatenate(
            [tiles.mean(axis=0, dtype=np.float64), tiles.std(axis=0, dtype=np.float64)]
        )

    parity = [
        "slide embedding vs numpy mean and std: max |diff| "
        f"{np.max(np.abs(slide_embedding(tiles) - numpy_embedding())):.1e}"
    ]
    mmd_x = batch[: args.mmd_batch]
    model = build_model("abmil", in_dim=d, n_classes=2)
    bag = torch.from_numpy(tiles)
    mask = torch.ones(1, args.tiles, dtype=torch.bool)
    tile_mask = torch.ones(args.tiles, 1, dtype=torch.bool)
    mmd_name = f"mmd batch ({args.permutations} permutations)"
    cases = [
        Case(
            "slide embedding",
            1,
            lambda: slide_embedding(tiles),
            "numpy mean + std",
            numpy_embedding,
        ),
        *gate_cases(reference, calibration, [batch[:1], batch], parity),
        *calibration_cases(rng, args.calibration, args.batch),
        *conformal_cases(rng, args.calibration, args.batch, parity),
        Case(
            mmd_name, len(mmd_x), lambda: mmd_test(reference, mmd_x, permutations=args.permutations)
        ),
        Case("abmil forward", 1, lambda: model.predict(bag[None], mask)),
        Case("abmil, tiles as one-tile bags", 1, lambda: model.predict(bag[:, None], tile_mask)),
    ]
    results = timed(cases, args.repeats)

    print(
        f"\n{'case':<36} {'slides/call':>11} {'ms/slide':>10}  {'peer':<26} "
        f"{'peer ms/slide':>13} {'ratio':>6}"
    )
    ms: dict[tuple[str, int], float] = {}
    for case, (ours_s, peer_s) in zip(cases, results, strict=True):
        ms[(case.name, case.slides)] = 1e3 * ours_s
        row = f"{case.name:<36} {case.slides:>11} {1e3 * ours_s:>10.4f}  {case.peer_name:<26} "
        if peer_s is not None:
            row += f"{1e3 * peer_s:>13.4f} {ours_s / peer_s:>6.2f}"
        print(row)
    print(f"{mmd_name}: {ms[(mmd_name, len(mmd_x))] * len(mmd_x) / 1e3:.2f} s per batch")

    print("\nparity:")
    for line in parity:
        print("  " + line)
    forward = ms[("abmil forward", 1)]
    ensemble = args.folds * forward
    mmd_share = ms[(mmd_name, len(mmd_x))]
    print(
        f"\ntrust step per slide, one slide per call, against one ABMIL forward "
        f"({forward:.1f} ms) and a {args.folds}-fold ensemble ({ensemble:.1f} ms):"
    )
    for gate_score in ("knn-euclidean", "knn", "mahalanobis"):
        trust = sum(
            ms[(name, 1)]
            for name in (
                "slide embedding",
                f"gate {gate_score}",
                "calibrate (temperature)",
                "sets lac, C=2",
            )
        )
        print(
            f"  embedding + gate {gate_score} + calibrate + LAC set: {trust:.2f} ms "
            f"({trust / forward:.0%} / {trust / ensemble:.0%}); with the MMD share of a batch "
            f"of {len(mmd_x)}: {trust + mmd_share:.2f} ms ({(trust + mmd_share) / forward:.0%} "
            f"/ {(trust + mmd_share) / ensemble:.0%})"
        )


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return np.asarray(e / e.sum(axis=1, keepdims=True))


if __name__ == "__main__":
    main()
