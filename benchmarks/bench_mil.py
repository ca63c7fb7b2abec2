"""MIL training speed against torchmil 1.0.2: seconds per epoch, ABMIL and TransMIL.

Random float32 bags of ``--instances`` x ``--dim`` (2,000 x 512 by default, held in memory),
two classes, batch 1 (one bag per AdamW step), the same architecture on both sides:

- ABMIL: Linear(512, 128) + ReLU + Dropout(0.1), gated attention (64), linear head. histoguard's
  ``abmil`` also has a dropout inside the gated attention (``attention_dropout``); the row
  ``abmil (as torchmil)`` turns it off so that both models are the same.
- TransMIL: width 128, 4 heads, Nyström attention with 64 landmarks and 6 pseudo-inverse
  iterations, PPEG, two layers (histoguard ``transmil`` with ``attention="nystrom"``; its
  exact-attention default is timed too).

histoguard is timed through its training loop (:func:`histoguard.mil.train_split`, one epoch
measured between two ``on_epoch`` calls: training steps plus the validation pass of one bag);
torchmil through the plain loop its documentation shows (``compute_loss``, ``backward``,
``step``); ``old loop`` is the loop ``train_split`` ran before this benchmark's issue (features
standardised and masked at every step). Every round runs every row once, interleaved; the
table shows the median and the fastest of ``--rounds`` rounds, each with its ratio to
torchmil's (on a shared machine the fastest round is the one least disturbed by others).

    python benchmarks/bench_mil.py [--bags 200] [--transmil-bags 40] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch

from histoguard.mil import Bag, Cohort, CohortRow, TrainConfig, build_model, train_split
from histoguard.mil._splits import Split

Epoch = Callable[[], float]


def _histoguard_epoch(features: torch.Tensor, labels: torch.Tensor, **model: object) -> Epoch:
    """One epoch of ``train_split`` on ``features (S, N, D)``; the last bag validates."""
    ids = [f"s{i:04d}" for i in range(len(features))]
    rows = [
        CohortRow(slide_id=s, label=str(int(y)), patient_id=s)
        for s, y in zip(ids, labels, strict=True)
    ]
    bags = {s: Bag(s, features[i], None) for i, s in enumerate(ids)}
    split = Split(name="bench", train=tuple(ids[:-1]), val=(ids[-1],), test=())
    name = str(model.pop("name"))
    config = TrainConfig(
        cohort=os.devnull, features=os.devnull, out=os.devnull,  # type: ignore[arg-type]
        model=name, model_kwargs=model, epochs=2, patience=10, max_instances=None,
    )  # fmt: skip
    cohort = Cohort.from_rows(rows)

    def epoch() -> float:
        stamps: list[float] = []
        train_split(
            split, cohort, bags, config, on_epoch=lambda *_: stamps.append(time.perf_counter())
        )
        return stamps[1] - stamps[0]

    return epoch


def _old_loop_epoch(features: torch.Tensor, labels: torch.Tensor, **model: object) -> Epoch:
    """The per-step work of the loop before: ``model(features, mask)`` standardises and masks."""
    net = build_model(in_dim=features.shape[2], n_classes=2, **model)  # type: ignore[arg-type]
    net.fit_feature_scaling(features[:, :256].reshape(-1, features.shape[2]))
    optimiser = torch.optim.AdamW(net.parameters(), lr=2e-4, weight_decay=1e-4)

    def epoch() -> float:
        net.train()
        started = time.perf_counter()
        for i in range(len(features)):
            mask = torch.ones(1, features.shape[1], dtype=torch.bool)
            loss = net.compute_loss(net(features[i : i + 1], mask), labels[i : i + 1])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        return time.perf_counter() - started

    return epoch


def _torchmil_epoch(features: torch.Tensor, labels: torch.Tensor, model: str) -> Epoch:
    from torchmil.models import ABMIL, TransMIL

    dim = features.shape[2]
    net: torch.nn.Module
    if model == "abmil":
        embed = torch.nn.Sequential(
            torch.nn.Linear(dim, 128), torch.nn.ReLU(), torch.nn.Dropout(0.1)
        )
        net = ABMIL(in_shape=(dim,), att_dim=64, gated=True, feat_ext=embed)
    else:
        net = TransMIL(in_shape=(dim,), att_dim=128, n_heads=4, n_landmarks=64, dropout=0.1)
    optimiser = torch.optim.AdamW(net.parameters(), lr=2e-4, weight_decay=1e-4)
    mask = torch.ones(1, features.shape[1], dtype=torch.bool)

    def epoch() -> float:
        net.train()
        started = time.perf_counter()
        for i in range(len(features)):
            x, y = features[i : i + 1], labels[i : i + 1]
            if model == "abmil":
                _, losses = net.compute_loss(y, x, mask)
            else:
                _, losses = net.compute_loss(y, x)
            loss = sum(losses.values())
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        return time.perf_counter() - started

    return epoch


def _abmil_gemm_epoch(features: torch.Tensor) -> Epoch:
    """The floor: only the matrix products of an ABMIL step (embedding forward and weight
    gradient, the gated attention's two 128 -> 64 projections forward, weight and input
    gradients), fp32, as both libraries compute them; everything else excluded."""
    n, dim = features.shape[1:]
    gen = torch.Generator().manual_seed(0)
    w_embed, w_att = torch.randn(128, dim, generator=gen), torch.randn(128, 128, generator=gen)
    g_embed, g_att = torch.randn(n, 128, generator=gen), torch.randn(n, 128, generator=gen)

    def epoch() -> float:
        started = time.perf_counter()
        for i in range(len(features)):
            x = features[i]
            hidden = x @ w_embed.T  # forward
            _ = g_embed.T @ x  # embedding weight gradient (no input gradient is needed)
            _ = hidden @ w_att.T, g_att.T @ hidden, g_att @ w_att
        return time.perf_counter() - started

    return epoch


def _table(title: str, rows: dict[str, Epoch], rounds: int, peer: str) -> None:
    times: dict[str, list[float]] = {name: [] for name in rows}
    for run in rows.values():  # warm-up: allocator, MKL/oneDNN kernels
        run()
    for _ in range(rounds):
        for name, run in rows.items():
            times[name].append(run())
    reference, fastest = statistics.median(times[peer]), min(times[peer])
    print(f"\n{title}")
    ratio = "÷ torchmil"
    print(f"{'':<26} {'median s/epoch':>15} {ratio:>11} {'min s/epoch':>12} {ratio:>11}")
    for name, values in times.items():
        median, least = statistics.median(values), min(values)
        print(
            f"{name:<26} {median:>15.2f} {median / reference:>11.2f} "
            f"{least:>12.2f} {least / fastest:>11.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bags", type=int, default=200, help="ABMIL bags per epoch")
    parser.add_argument("--transmil-bags", type=int, default=40, help="TransMIL bags per epoch")
    parser.add_argument("--instances", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--models", nargs="+", default=["abmil", "transmil"])
    args = parser.parse_args()
    print(
        f"bags of {args.instances} x {args.dim} float32, batch 1; {platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads)"
    )
    torch.manual_seed(0)
    bags = max(args.bags, args.transmil_bags)
    features = torch.randn(bags, args.instances, args.dim)
    labels = torch.randint(0, 2, (bags,))
    if "abmil" in args.models:
        x, y = features[: args.bags], labels[: args.bags]
        _table(
            f"ABMIL, {args.bags} bags per epoch",
            {
                "torchmil ABMIL": _torchmil_epoch(x, y, "abmil"),
                "abmil (as torchmil)": _histoguard_epoch(x, y, name="abmil", attention_dropout=0.0),
                "abmil (default)": _histoguard_epoch(x, y, name="abmil"),
                "abmil, old loop": _old_loop_epoch(x, y, name="abmil"),
                "GEMMs alone (floor)": _abmil_gemm_epoch(x),
            },
            args.rounds,
            "torchmil ABMIL",
        )
    if "transmil" in args.models:
        x, y = features[: args.transmil_bags], labels[: args.transmil_bags]
        _table(
            f"TransMIL, {args.transmil_bags} bags per epoch",
            {
                "torchmil TransMIL": _torchmil_epoch(x, y, "transmil"),
                "transmil nystrom": _histoguard_epoch(
                    x, y, name="transmil", attention="nystrom", n_landmarks=64
                ),
                "transmil exact (default)": _histoguard_epoch(x, y, name="transmil"),
            },
            args.rounds,
            "torchmil TransMIL",
        )


if __name__ == "__main__":
    main()
