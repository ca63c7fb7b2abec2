"""Encoder training from tile labels, on tiny synthetic tiles: it learns, its weights load
through ``load_encoder`` unchanged, ``hg-d4`` stays exactly invariant, a run resumes where it
was interrupted, and validation never shares a slide with training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from histoguard.encoders import (
    EncoderTrainingConfig,
    load_encoder,
    train_encoder,
)
from histoguard.encoders._d4 import d4_transform
from histoguard.encoders._training_steps import (
    D4_AUGMENT,
    BatchAugmenter,
    default_augmentations,
    split_by_slide,
    supervised_contrastive_loss,
)
from histoguard.errors import ConfigError
from histoguard.robustness import TileDataset

SIZE = 32


def _texture(rng: np.random.Generator, cls: int, tint: np.ndarray) -> np.ndarray:
    """Class 0: smooth blobs; class 1: fine grain. ``tint``: the center's colour cast."""
    if cls == 0:
        coarse = rng.random((4, 4))
        base = np.kron(coarse, np.ones((SIZE // 4, SIZE // 4)))
    else:
        base = rng.random((SIZE, SIZE))
    rgb = 60 + 150 * base[..., None] * tint[None, None, :]
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _tiles(n_slides: int = 12, per_slide: int = 6, seed: int = 0) -> TileDataset:
    """Two centers with different colour casts; each slide holds one class."""
    rng = np.random.default_rng(seed)
    tints = {"A": np.array([1.0, 0.6, 0.9]), "B": np.array([0.8, 0.8, 1.0])}
    images, labels, centers, slides, names = [], [], [], [], []
    for s in range(n_slides):
        center = "AB"[s % 2]
        cls = (s // 2) % 2
        for t in range(per_slide):
            images.append(_texture(rng, cls, tints[center]))
            labels.append(f"class{cls}")
            centers.append(center)
            slides.append(f"slide{s}")
            names.append(f"slide{s}/tile{t}.png")
    return TileDataset(
        paths=np.array(names),
        label=np.array(labels),
        center=np.array(centers),
        slide_id=np.array(slides),
        images=np.stack(images),
    )


def _config(**changes: object) -> EncoderTrainingConfig:
    settings: dict[str, object] = {
        "encoder": "hg-cnn",
        "epochs": 4,
        "batch_size": 16,
        "lr": 3e-3,
        "tile_size": SIZE,
        "val_fraction": 0.34,
        "patience": 10,
        "augment": ("hed_jitter:2", "blur:1"),
    }
    settings.update(changes)
    return EncoderTrainingConfig(**settings)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def trained_d4(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object, TileDataset]:
    tiles = _tiles()
    out = tmp_path_factory.mktemp("d4")
    result = train_encoder(tiles, _config(encoder="hg-d4", epochs=5, lr=1e-2), out)
    return out, result, tiles


def test_training_learns_above_chance(trained_d4: tuple[Path, object, TileDataset]) -> None:
    _, result, _ = trained_d4
    history = result.history  # type: ignore[attr-defined]
    assert len(history) == 5
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert result.val_balanced_accuracy is not None  # type: ignore[attr-defined]
    assert result.val_balanced_accuracy > 0.75  # type: ignore[attr-defined]  # chance: 0.5


def test_trained_weights_load_unchanged(trained_d4: tuple[Path, object, TileDataset]) -> None:
    out, result, tiles = trained_d4
    loaded = load_encoder("hg-d4", weights=out / "encoder.safetensors")
    pixels = tiles.load(np.arange(8))
    expected = result.encoder.encode(pixels)  # type: ignore[attr-defined]
    got = loaded.encode(pixels)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    # ... and they are not the untrained weights.
    untrained = load_encoder("hg-d4").encode(pixels)
    assert np.abs(untrained - got).max() > 1e-3


def test_trained_hg_d4_keeps_exact_d4_invariance(
    trained_d4: tuple[Path, object, TileDataset],
) -> None:
    out, _, _ = trained_d4
    module = load_encoder("hg-d4", weights=out / "encoder.safetensors").module
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = module(x)
        for g in range(8):
            other = module(d4_transform(x, g))
            relative = (other - reference).norm() / reference.norm()
            assert float(relative) <= 1e-5, (g, float(relative))


def test_provenance_records_data_classes_centers_augmentation(
    trained_d4: tuple[Path, object, TileDataset],
) -> None:
    out, result, tiles = trained_d4
    record = json.loads((out / "encoder.json").read_text())
    for key in ("data", "classes", "centers", "augmentation", "config", "histoguard_version",
                "best_epoch", "val_balanced_accuracy"):  # fmt: skip
        assert key in record, key
    assert record["classes"] == ["class0", "class1"]
    assert record["centers"] == ["A", "B"]
    assert record["augmentation"] == ["hed_jitter:2", "blur:1"]
    assert len(record["data"]["sha256"]) == 64
    assert record["data"]["n_train"] + record["data"]["n_val"] == len(tiles)
    assert record["best_epoch"] == result.best_epoch  # type: ignore[attr-defined]
    assert record["d4_invariant"] is True


def test_resume_after_interruption_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    tiles = _tiles(n_slides=6, per_slide=4)
    config = _config(epochs=3)
    whole = train_encoder(tiles, config, tmp_path / "whole")

    def interrupt_after_two(line: str) -> None:
        if line.startswith("epoch 2/"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_encoder(tiles, config, tmp_path / "cut", log=interrupt_after_two)
    saved = json.loads((tmp_path / "cut" / "checkpoint.json").read_text())
    assert saved["epoch"] == 2
    with pytest.raises(ConfigError, match="resume"):
        train_encoder(tiles, config, tmp_path / "cut")
    lines: list[str] = []
    resumed = train_encoder(tiles, config, tmp_path / "cut", resume=True, log=lines.append)
    assert [line.split(":")[0] for line in lines] == ["epoch 3/3"]
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    a = whole.encoder.module.state_dict()
    b = resumed.encoder.module.state_dict()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6)
    with pytest.raises(ConfigError, match="another configuration"):
        train_encoder(tiles, _config(epochs=3, lr=1e-4), tmp_path / "cut", resume=True)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_validation_split_never_shares_a_slide(seed: int) -> None:
    rng = np.random.default_rng(seed)
    slides = np.array([f"s{i}" for i in rng.integers(0, 15, size=200)])
    slides[:3] = "s99"  # a slide whose class ("c0") has only those 3 tiles in it ...
    labels = np.array([f"c{int(s[1:]) % 3}" for s in slides])
    train, val = split_by_slide(slides, labels, val_fraction=0.25, seed=seed)
    assert len(train) + len(val) == len(slides)
    assert len(val) > 0
    assert not set(slides[train].tolist()) & set(slides[val].tolist())
    with pytest.raises(ConfigError, match="slides"):
        split_by_slide(
            np.array(["a", "a", "b", "c"]), np.array(["x", "y", "x", "y"]), val_fraction=0.2, seed=0
        )


def test_contrastive_loss_takes_positives_from_other_centers_only() -> None:
    labels = torch.tensor([0, 0, 1, 1])
    same_center = torch.tensor([0, 0, 0, 0])
    z = torch.randn(4, 8, requires_grad=True)
    assert float(supervised_contrastive_loss(z, labels, same_center).detach()) == 0.0
    centers = torch.tensor([0, 1, 0, 1])
    aligned = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    crossed = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    assert supervised_contrastive_loss(aligned, labels, centers) < supervised_contrastive_loss(
        crossed, labels, centers
    )
    loss = supervised_contrastive_loss(z, labels, centers)
    loss.backward()
    assert z.grad is not None and float(z.grad.abs().sum()) > 0


def test_contrastive_training_runs(tmp_path: Path) -> None:
    result = train_encoder(
        _tiles(n_slides=6, per_slide=4), _config(epochs=1, contrastive_weight=0.5), tmp_path
    )
    assert np.isfinite(result.history[0]["train_loss"])


def test_default_augmentation_adds_d4_only_where_not_invariant() -> None:
    assert not set(D4_AUGMENT) & set(default_augmentations(d4_invariant=True))
    assert set(D4_AUGMENT) <= set(default_augmentations(d4_invariant=False))


def test_augmenter_is_seeded_and_changes_tiles() -> None:
    tiles = _tiles(n_slides=2, per_slide=8).load()
    augmenter = BatchAugmenter(default_augmentations(d4_invariant=False))
    a = augmenter(tiles, seed=0, epoch=0, batch=0)
    assert np.array_equal(a, augmenter(tiles, seed=0, epoch=0, batch=0))
    assert not np.array_equal(a, augmenter(tiles, seed=0, epoch=1, batch=0))
    assert a.shape == tiles.shape and a.dtype == np.uint8
    assert (a != tiles).any(axis=(1, 2, 3)).sum() >= len(tiles) // 2


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"encoder": "hg-handcrafted"}, "no trainable"),
        ({"augment": ("not_a_perturbation",)}, "not_a_perturbation"),
        ({"batch_size": 1}, "batch_size"),
        ({"val_fraction": 1.0}, "val_fraction"),
    ],
)
def test_mistakes_raise_config_errors(
    tmp_path: Path, changes: dict[str, object], match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        train_encoder(_tiles(n_slides=4, per_slide=2), _config(**changes), tmp_path)


def test_one_class_is_refused(tmp_path: Path) -> None:
    tiles = _tiles(n_slides=4, per_slide=2)
    one = tiles.subset(tiles.label == "class0")
    with pytest.raises(ConfigError, match="two classes"):
        train_encoder(one, _config(val_fraction=0.0), tmp_path)
