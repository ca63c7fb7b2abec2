"""Training-time robustness: gradient reversal, the DANN schedule, the supervised-contrastive
loss, the options' plumbing, and a planted cohort where the adversary removes the center."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict

from histoguard.errors import ConfigError
from histoguard.features import write_feature_file
from histoguard.mil import TrainConfig, build_model, load_train_config, train, train_split
from histoguard.mil._bags import Bag, bag_batch
from histoguard.mil._cohort import Cohort, CohortRow
from histoguard.mil._robust_training import (
    RobustObjective,
    check_adversarial_centers,
    dann_lambda,
    reverse_gradient,
    supervised_contrastive_loss,
)
from histoguard.mil._splits import Split
from histoguard.mil._train import _mean_loss

DIM, TILES = 16, 12


def _config(**kwargs: object) -> TrainConfig:
    return TrainConfig(cohort=Path("c.csv"), features=Path("f"), out=Path("o"), **kwargs)  # type: ignore[arg-type]


def _planted(
    seed: int, *, n_train: int = 24, n_val: int = 4, n_test: int = 16, center_shift: float = 1.0
) -> tuple[Cohort, dict[str, Bag], Split]:
    """Two centers x two classes, ``n_*`` bags per cell. The center shifts every tile by
    ``center_shift`` along a direction of the first 4 features (a strong signal); the class
    shifts a third of the tiles by 1.6 along a direction of the next 4 (a weaker one)."""
    rng = np.random.default_rng(seed)
    center_dir, class_dir = np.zeros(DIM), np.zeros(DIM)
    center_dir[:4], class_dir[4:8] = 0.5, 0.5
    rows, bags, parts = [], {}, {"train": [], "val": [], "test": []}
    for part, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        for center in (0, 1):
            for label in (0, 1):
                for _ in range(n):
                    slide_id = f"{part}{len(rows):03d}"
                    x = rng.normal(size=(TILES, DIM)) + center_shift * (2 * center - 1) * center_dir
                    x[: TILES // 3] += 1.6 * (2 * label - 1) * class_dir
                    rows.append(
                        CohortRow(
                            slide_id=slide_id,
                            label=("neg", "pos")[label],
                            patient_id=slide_id,
                            center=f"c{center}",
                        )
                    )
                    bags[slide_id] = Bag(slide_id, torch.tensor(x, dtype=torch.float32), None)
                    parts[part].append(slide_id)
    split = Split(
        name="planted",
        train=tuple(parts["train"]),
        val=tuple(parts["val"]),
        test=tuple(parts["test"]),
    )
    return Cohort.from_rows(rows), bags, split


def test_gradient_reversal_flips_the_gradient_sign_exactly() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, generator=gen, requires_grad=True)
    weights = torch.randn(5, 2, generator=gen)

    def downstream(values: torch.Tensor) -> torch.Tensor:
        return torch.tanh(values @ weights).pow(2).sum()

    (plain,) = torch.autograd.grad(downstream(x), x)
    for scale in (1.0, 0.37, 0.0):
        reversed_x = reverse_gradient(x, scale)
        assert torch.equal(reversed_x, x)  # identity forward
        (flipped,) = torch.autograd.grad(downstream(reversed_x), x)
        assert torch.equal(flipped, -scale * plain)


def test_dann_schedule_rises_from_zero_to_lambda_max() -> None:
    progress = np.linspace(0, 1, 11)
    values = np.array([dann_lambda(float(p), 2.5) for p in progress])
    # 2 / (1 + exp(-10 p)) - 1 is tanh(5 p): an independent form of the same curve.
    np.testing.assert_allclose(values, 2.5 * np.tanh(5 * progress), rtol=1e-12, atol=1e-12)
    assert values[0] == 0.0 and np.all(np.diff(values) > 0) and 0.9999 * 2.5 < values[-1] < 2.5
    assert dann_lambda(0.5, 0.0) == 0.0
    with pytest.raises(ValueError, match="progress"):
        dann_lambda(1.5, 1.0)


def _supcon_numpy(z: np.ndarray, labels: list[int], centers: list[int], tau: float) -> float:
    """SupCon (L_out) written out anchor by anchor, positives center-aware."""
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    losses = []
    for i in range(len(z)):
        others = [a for a in range(len(z)) if a != i]
        same = [p for p in others if labels[p] == labels[i]]
        cross = [
            p for p in same if centers[p] >= 0 and centers[i] >= 0 and centers[p] != centers[i]
        ]
        positives = cross or same
        if not positives:
            continue
        denominator = sum(np.exp(z[i] @ z[a] / tau) for a in others)
        losses.append(
            -np.mean([np.log(np.exp(z[i] @ z[p] / tau) / denominator) for p in positives])
        )
    return float(np.mean(losses))


def test_supervised_contrastive_loss_matches_a_direct_computation() -> None:
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    labels, centers = [0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 1, -1]
    # anchors 0, 1: a cross-center positive (2); anchors 3, 4: none, so same class; 5: none.
    loss = supervised_contrastive_loss(
        z, torch.tensor(labels), torch.tensor(centers), temperature=0.2
    )
    assert loss is not None
    assert float(loss) == pytest.approx(_supcon_numpy(z.numpy(), labels, centers, 0.2), rel=1e-10)
    alone = supervised_contrastive_loss(
        z[:2], torch.tensor([0, 1]), torch.tensor([0, 1]), temperature=0.2
    )
    assert alone is None  # no anchor has a positive


def test_with_both_options_off_training_is_the_plain_loop_bit_for_bit() -> None:
    cohort, bags, split = _planted(0, n_train=4, n_val=2, n_test=1)
    kwargs = {"model": "abmil", "model_kwargs": {"hidden_dim": 8, "attention_dim": 4}}
    kwargs |= {"epochs": 2, "patience": 5, "lr": 1e-3, "max_instances": 8}
    default = train_split(split, cohort, bags, _config(**kwargs))
    explicit = train_split(
        split, cohort, bags,
        _config(**kwargs, adversarial_weight=0.0, contrastive_weight=0.0, bags_per_step=1),
    )  # fmt: skip

    # The training loop as it was before these options: one bag per step.
    config = _config(**kwargs)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    label_of = {row.slide_id: cohort.label_index(row) for row in cohort.rows}
    train_ids, val_ids = list(split.train), list(split.val)
    train_labels = torch.tensor([label_of[s] for s in train_ids])
    val_labels = torch.tensor([label_of[s] for s in val_ids])
    model = build_model("abmil", in_dim=DIM, n_classes=2, hidden_dim=8, attention_dim=4)
    model.fit_feature_scaling(torch.cat([bags[s].features for s in train_ids]))
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=config.weight_decay)
    counts = torch.bincount(train_labels, minlength=2).float()
    weights = counts.sum() / (len(counts) * counts.clamp(min=1))
    best_loss, best_state = float("inf"), copy.deepcopy(model.state_dict())
    for _ in range(config.epochs):
        model.train()
        for index in torch.randperm(len(train_ids), generator=generator).tolist():
            features, mask = bag_batch(bags[train_ids[index]], generator, 8)
            output = model(features, mask)
            loss = model.compute_loss(output, train_labels[index].view(1), class_weights=weights)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        val_loss = _mean_loss(model, [bags[s] for s in val_ids], val_labels, weights)
        if val_loss < best_loss - 1e-6:
            best_loss, best_state = val_loss, copy.deepcopy(model.state_dict())

    for trained in (default, explicit):
        state = trained.state_dict()
        assert state.keys() == best_state.keys()
        for name, value in best_state.items():
            assert torch.equal(state[name], value), name


def test_options_are_checked_loaded_and_recorded(tmp_path: Path) -> None:
    assert _config(contrastive_weight=0.5).bags_per_step == 8  # 1 leaves nothing to contrast
    assert _config(contrastive_weight=0.5, bags_per_step=4).bags_per_step == 4
    assert _config(adversarial_weight=1.0).bags_per_step == 1
    for bad in (
        {"adversarial_weight": -1.0},
        {"contrastive_weight": -0.1},
        {"contrastive_temperature": 0.0},
        {"bags_per_step": 0},
    ):
        with pytest.raises(ConfigError):
            _config(**bad)
    path = tmp_path / "train.yaml"
    path.write_text(
        "cohort: c.csv\nfeatures: f\nout: o\nadversarial_weight: 1\ncontrastive_weight: 0.2\n"
        "contrastive_temperature: 0.05\nbags_per_step: 16\n"
    )
    config = load_train_config(path)
    recorded = json.loads(json.dumps(config.to_dict()))
    assert recorded["adversarial_weight"] == 1.0 and recorded["contrastive_weight"] == 0.2
    assert recorded["contrastive_temperature"] == 0.05 and recorded["bags_per_step"] == 16
    path.write_text("cohort: c.csv\nfeatures: f\nout: o\nbags_per_step: many\n")
    with pytest.raises(ConfigError, match="bags_per_step: expected an integer"):
        load_train_config(path)
    path.write_text("cohort: c.csv\nfeatures: f\nout: o\nadversarial_unlabelled: true\n")
    with pytest.raises(ConfigError, match="set adversarial_weight > 0"):
        load_train_config(path)  # nothing would read the unlabelled slides
    assert load_train_config(path, adversarial_weight=1.0).to_dict()["adversarial_unlabelled"]
    path.write_text("cohort: c.csv\nfeatures: f\nout: o\nadversarial_unlabelled: often\n")
    with pytest.raises(ConfigError, match="adversarial_unlabelled: expected true or false"):
        load_train_config(path)


def test_adversary_needs_two_training_centers(caplog: pytest.LogCaptureFixture) -> None:
    cohort, bags, split = _planted(0, n_train=2, n_val=1, n_test=1)
    one_center = Split(
        name="one",
        train=tuple(s for s in split.train if cohort.rows[int(s[-3:])].center == "c0"),
        val=split.val,
        test=split.test,
    )
    with pytest.raises(ConfigError, match="at least 2 centers"):
        check_adversarial_centers([one_center], cohort, 1.0)
    check_adversarial_centers([one_center, split], cohort, 1.0)  # one split suffices
    check_adversarial_centers([one_center], cohort, 0.0)  # off: nothing to check
    config = _config(epochs=2, adversarial_weight=1.0, model="mean-pool")
    with caplog.at_level(logging.INFO, logger="histoguard.mil"):
        train_split(one_center, cohort, bags, config)
    assert "trains without the center adversary" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="histoguard.mil"):
        train_split(split, cohort, bags, config)
    assert "epoch 2/2: center adversary accuracy" in caplog.text


@pytest.mark.parametrize("name", ["abmil", "clam-mb", "dsmil", "topk", "transmil"])
def test_both_options_train_every_kind_of_model(name: str) -> None:
    cohort, bags, split = _planted(0, n_train=2, n_val=1, n_test=1)
    config = _config(
        model=name, model_kwargs={"hidden_dim": 8}, epochs=2, adversarial_weight=1.0,
        contrastive_weight=0.5, bags_per_step=4,
    )  # fmt: skip
    model = train_split(split, cohort, bags, config)
    features, mask = bag_batch(bags[split.test[0]], None, None)
    probs, _ = model.predict(features, mask)
    assert torch.isfinite(probs).all()
    assert not any("adversary" in key for key in model.state_dict())  # not in the saved model


def _center_and_class_auc(seed: int, adversarial_weight: float) -> tuple[float, float]:
    """Train a tiny mean-pool model on the planted cohort; return the center AUROC of a
    logistic probe on held-out bag embeddings (4-fold CV) and the held-out class AUROC."""
    cohort, bags, split = _planted(seed)
    config = _config(
        model="mean-pool", model_kwargs={"hidden_dim": 16, "dropout": 0.0}, epochs=60,
        patience=60, lr=3e-3, seed=seed, bags_per_step=8, adversarial_weight=adversarial_weight,
    )  # fmt: skip
    model = train_split(split, cohort, bags, config)
    embeddings, scores = [], []
    with torch.no_grad():
        for slide_id in split.test:
            output = model(*bag_batch(bags[slide_id], None, None))
            assert output.embedding is not None
            embeddings.append(output.embedding[0].numpy())
            scores.append(float(torch.softmax(output.logits, dim=1)[0, 1]))
    row = {r.slide_id: r for r in cohort.rows}
    center = np.array([row[s].center == "c1" for s in split.test])
    label = np.array([row[s].label == "pos" for s in split.test])
    probe = cross_val_predict(
        LogisticRegression(max_iter=2000),
        np.stack(embeddings),
        center,
        cv=StratifiedKFold(4, shuffle=True, random_state=0),
        method="predict_proba",
    )[:, 1]
    return float(roc_auc_score(center, probe)), float(roc_auc_score(label, scores))


def test_adversarial_training_hides_the_center_and_keeps_the_class() -> None:
    # Averaged over 3 seeds: one adversarial run can end a swing of the min-max game with the
    # center still readable. Locally (seeds 0-8), the mean center AUROC drop per group of three
    # seeds was 0.08-0.21, the class AUROC drop at most 0.02.
    plain = np.array([_center_and_class_auc(seed, 0.0) for seed in range(3)])
    adversarial = np.array([_center_and_class_auc(seed, 30.0) for seed in range(3)])
    assert plain[:, 0].mean() > 0.9  # the center is readable from plain embeddings
    assert adversarial[:, 0].mean() < plain[:, 0].mean() - 0.05
    assert adversarial[:, 1].mean() > 0.9
    assert adversarial[:, 1].mean() > plain[:, 1].mean() - 0.05


def _one_center_split(cohort: Cohort, split: Split) -> Split:
    """``split`` trained and validated on center c0 only, tested on c1 (as leave-one-center-out
    on two centers), with c0 test slides as calibration slides."""
    center = {row.slide_id: row.center for row in cohort.rows}
    return Split(
        name="c1-held-out",
        train=tuple(s for s in split.train if center[s] == "c0"),
        val=tuple(s for s in split.val if center[s] == "c0"),
        test=tuple(s for s in split.test if center[s] == "c1"),
        held_out_centers=("c1",),
        calibration=tuple(s for s in split.test if center[s] == "c0"),
    )


def _relabelled(cohort: Cohort, slides: tuple[str, ...], labels: list[str]) -> Cohort:
    new = dict(zip(slides, labels, strict=True))
    rows = [dataclasses.replace(r, label=new.get(r.slide_id, r.label)) for r in cohort.rows]
    return Cohort.from_rows(rows, labels=cohort.labels)


def _states_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    first, second = a.state_dict(), b.state_dict()
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_unlabelled_test_slides_shape_the_model_but_their_labels_are_never_read() -> None:
    cohort, bags, split = _planted(0, n_train=4, n_val=2, n_test=4)
    split = _one_center_split(cohort, split)
    config = _config(
        model="abmil", model_kwargs={"hidden_dim": 8, "attention_dim": 4}, epochs=3, patience=5,
        lr=1e-3, max_instances=8, adversarial_weight=1.0, adversarial_unlabelled=True,
        contrastive_weight=0.5, bags_per_step=2,
    )  # fmt: skip
    robust = RobustObjective(
        build_model("abmil", in_dim=DIM, n_classes=2), split, cohort, adversarial_weight=1.0,
        contrastive_weight=0.0, temperature=0.1, unlabelled=True,
    )  # fmt: skip
    assert robust.target_ids == split.test  # the test slides, never the calibration ones
    assert robust.adversary is not None  # c0 from training, c1 from the test slides
    base = train_split(split, cohort, bags, config)

    rng = np.random.default_rng(1)
    test_labels = [cohort.row(s).label for s in split.test]
    assert len(set(test_labels)) == 2
    permuted = _relabelled(cohort, split.test, list(rng.permutation(test_labels)))
    erased = _relabelled(cohort, split.test, ["neg"] * len(split.test))  # all one class
    for relabelled in (permuted, erased):
        assert _states_equal(base, train_split(split, relabelled, bags, config))

    # ... while the test slides' features do move the weights, and only with the option on.
    shifted = {**bags}
    for s in split.test:
        shifted[s] = dataclasses.replace(bags[s], features=bags[s].features + 1.0)
    assert not _states_equal(base, train_split(split, cohort, shifted, config))
    without = dataclasses.replace(config, adversarial_unlabelled=False)
    assert _states_equal(
        train_split(split, cohort, bags, without), train_split(split, cohort, shifted, without)
    )


def _write_two_center_cohort(folder: Path) -> tuple[Path, Path]:
    """The planted two-center cohort as a table and feature files (12 slides per center)."""
    cohort, bags, _ = _planted(0, n_train=3, n_val=1, n_test=2)
    features = folder / "features"
    features.mkdir()
    lines = ["slide_id,label,patient_id,center"]
    coords = np.stack([np.arange(TILES), np.zeros(TILES, dtype=int)], axis=1)
    for row in cohort.rows:
        x = bags[row.slide_id].features.numpy()
        write_feature_file(features / f"{row.slide_id}.h5", x, coords, {"encoder": "planted"})
        lines.append(f"{row.slide_id},{row.label},{row.patient_id},{row.center}")
    table = folder / "cohort.csv"
    table.write_text("\n".join(lines) + "\n")
    return table, features


@pytest.mark.parametrize("harmonize", ["none", "combat"])
def test_leave_one_center_out_on_two_centers_trains_the_adversary_on_unlabelled_slides(
    harmonize: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    table, features = _write_two_center_cohort(tmp_path)
    options: dict[str, object] = {
        "split": "leave-one-center-out", "model": "mean-pool", "epochs": 3, "patience": 3,
        "n_boot": 20, "adversarial_weight": 1.0, "bags_per_step": 2, "harmonize": harmonize,
        "harmonize_tiles": 6, "harmonize_min_slides": 4,
    }  # fmt: skip
    refused = TrainConfig(cohort=table, features=features, out=tmp_path / "a", **options)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="set adversarial_unlabelled"):
        train(refused)  # each split trains on one center: nothing for the adversary to tell
    config = dataclasses.replace(refused, out=tmp_path / "b", adversarial_unlabelled=True)
    with caplog.at_level(logging.INFO, logger="histoguard.mil"):
        result = train(config)
    assert len(result.fold_dirs) == 2
    for center in ("c0", "c1"):
        assert f"loco-{center} epoch 3/3: center adversary accuracy" in caplog.text
    assert caplog.text.count("unlabelled test slides)") == 2 * 3  # every epoch of both splits
    assert "trains without the center adversary" not in caplog.text
    assert json.loads((result.out / "config.json").read_text())["adversarial_unlabelled"]
