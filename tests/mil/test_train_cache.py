"""The training loop's bag cache and padded batches give the model the loop always gave."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from histoguard.mil import (
    Bag,
    Cohort,
    CohortRow,
    MILModel,
    TrainConfig,
    build_model,
    load_bags,
    load_cohort,
    train_split,
)
from histoguard.mil._bags import BagCache, bag_batch
from histoguard.mil._splits import Split, kfold_splits
from tests.mil.conftest import PseudoCohort

MODELS = ["mean-pool", "max-pool", "topk", "abmil", "clam-sb", "clam-mb", "transmil", "dsmil"]
DIM = 12


def _config(**kwargs: object) -> TrainConfig:
    options: dict[str, object] = {"epochs": 3, "patience": 5, "lr": 1e-3, "max_instances": 20}
    options.update(kwargs)
    return TrainConfig(cohort=Path("c.csv"), features=Path("f"), out=Path("o"), **options)  # type: ignore[arg-type]


def _generated(seed: int = 0) -> tuple[Cohort, dict[str, Bag], Split]:
    """16 bags of 5 to 30 tiles (some above max_instances, so subsampling is drawn)."""
    rng = np.random.default_rng(seed)
    rows, bags = [], {}
    for i in range(16):
        label = i % 2
        x = rng.normal(size=(int(rng.integers(5, 31)), DIM)) * 3 + 1
        x[:2, :3] += 2.0 * label
        slide_id = f"s{i:02d}"
        rows.append(CohortRow(slide_id=slide_id, label=("neg", "pos")[label], patient_id=slide_id))
        bags[slide_id] = Bag(slide_id, torch.tensor(x, dtype=torch.float32), None)
    ids = sorted(bags)
    split = Split(name="g", train=tuple(ids[:10]), val=tuple(ids[10:13]), test=tuple(ids[13:]))
    return Cohort.from_rows(rows), bags, split


def _reference_loop(
    split: Split, cohort: Cohort, bags: dict[str, Bag], config: TrainConfig
) -> MILModel:
    """``train_split`` as it was before the bag cache: ``model(features, mask)`` on each raw
    bag at every step (standardised and masked there), one bag per step, no robust terms."""
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    label_of = {r.slide_id: cohort.label_index(r) for r in cohort.rows}
    train_ids, val_ids = list(split.train), list(split.val)
    train_labels = torch.tensor([label_of[s] for s in train_ids])
    val_labels = torch.tensor([label_of[s] for s in val_ids])
    in_dim = int(bags[train_ids[0]].features.shape[1])
    model = build_model(config.model, in_dim=in_dim, n_classes=2, **config.model_kwargs)
    model.fit_feature_scaling(torch.cat([bags[s].features for s in train_ids]))
    optimiser = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    counts = torch.bincount(train_labels, minlength=2).float()
    weights = counts.sum() / (len(counts) * counts.clamp(min=1))
    best_loss, best_state, stale = float("inf"), copy.deepcopy(model.state_dict()), 0
    for _ in range(config.epochs):
        model.train()
        for index in torch.randperm(len(train_ids), generator=generator).tolist():
            features, mask = bag_batch(bags[train_ids[index]], generator, config.max_instances)
            output = model(features, mask)
            loss = model.compute_loss(output, train_labels[index].view(1), class_weights=weights)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        model.eval()
        total = 0.0
        with torch.no_grad():
            for slide_id, label in zip(val_ids, val_labels, strict=True):
                out = model(*bag_batch(bags[slide_id], None, None))
                total += float(model.compute_loss(out, label.view(1), class_weights=weights))
        val_loss = total / len(val_ids)
        if val_loss < best_loss - 1e-6:
            best_loss, best_state, stale = val_loss, copy.deepcopy(model.state_dict()), 0
        else:
            stale += 1
            if stale >= config.patience:
                break
    model.load_state_dict(best_state)
    return model.eval()


def _assert_same_state(a: MILModel, b: MILModel) -> None:
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    for name, value in state_a.items():
        assert torch.equal(value, state_b[name]), name


@pytest.mark.parametrize("model", MODELS)
def test_cached_loop_trains_the_same_model_as_the_per_step_loop_bit_for_bit(model: str) -> None:
    cohort, bags, split = _generated()
    config = _config(model=model)
    _assert_same_state(
        train_split(split, cohort, bags, config), _reference_loop(split, cohort, bags, config)
    )


def test_one_bag_padded_batches_are_the_plain_loop_bit_for_bit() -> None:
    cohort, bags, split = _generated(1)
    config = _config(model="abmil")
    padded = train_split(split, cohort, bags, _config(model="abmil", pad_batches=True))
    _assert_same_state(padded, train_split(split, cohort, bags, config))


def test_cache_rows_are_the_standardised_bags_and_padding_is_zero() -> None:
    _, bags, _ = _generated(2)
    model = build_model("abmil", in_dim=DIM, n_classes=2)
    model.fit_feature_scaling(torch.cat([b.features for b in bags.values()]))
    ordered = [bags[s] for s in sorted(bags)]
    cache = BagCache(ordered, model)
    assert cache.features.is_contiguous() and len(cache) == len(ordered)
    for i, bag in enumerate(ordered):
        assert torch.equal(cache.bag(i), model.standardize(bag.features))
    features, mask = cache.padded([0, 3], None, None)
    lengths = [len(ordered[0].features), len(ordered[3].features)]
    assert mask.sum(dim=1).tolist() == lengths
    assert torch.all(features[~mask] == 0)
    model.eval()
    with torch.no_grad():
        batched = model.forward_standardized(features, mask)
        alone = model(ordered[3].features[None], torch.ones(1, lengths[1], dtype=torch.bool))
    assert torch.allclose(batched.logits[1], alone.logits[0], atol=1e-6)


@pytest.mark.parametrize("model", ["abmil", "transmil"])
def test_padded_batches_learn(model: str) -> None:
    cohort, bags, split = _generated(3)
    kwargs = {"attention": "nystrom"} if model == "transmil" else {}
    config = _config(model=model, model_kwargs=kwargs, epochs=15, bags_per_step=4, pad_batches=True)
    losses: list[float] = []
    train_split(split, cohort, bags, config, on_epoch=lambda _, train, __: losses.append(train))
    assert np.mean(losses[-3:]) < losses[0]


@pytest.mark.parametrize("model", ["abmil", "transmil"])
def test_cached_loop_is_the_per_step_loop_on_real_tile_bags(
    pseudo_cohort: PseudoCohort, model: str
) -> None:
    config = TrainConfig(
        cohort=pseudo_cohort.table, features=pseudo_cohort.features, out=Path("o"),
        model=model, epochs=3, lr=1e-3, max_instances=12,
    )  # fmt: skip
    cohort = load_cohort(config.cohort, features_dir=config.features)
    bags = load_bags(cohort, config.features)
    split = kfold_splits(cohort, k=3, seed=0)[0]
    _assert_same_state(
        train_split(split, cohort, bags, config), _reference_loop(split, cohort, bags, config)
    )
