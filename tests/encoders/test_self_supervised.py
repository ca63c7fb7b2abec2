"""Self-supervised (SimCLR) encoder training on tiny synthetic tiles: the NT-Xent loss is right,
labels are never read, the validation loss picks the epoch, the weights load through
``load_encoder`` and ``hg-d4`` stays exactly invariant; a folder of unlabelled tiles loads."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from histoguard.encoders import EncoderTrainingConfig, load_encoder, train_encoder
from histoguard.encoders._d4 import d4_transform
from histoguard.encoders._training_steps import (
    SELF_SUPERVISED_AUGMENT,
    default_augmentations,
    simclr_loss,
)
from histoguard.errors import AuditDataError, ConfigError
from histoguard.robustness import load_unlabelled_tiles
from tests.encoders.test_training import SIZE, _config, _tiles


def _nt_xent_reference(first: torch.Tensor, second: torch.Tensor, temperature: float) -> float:
    """NT-Xent written out anchor by anchor (Chen et al. 2020, eq. 1), for parity."""
    z = torch.nn.functional.normalize(torch.cat([first, second]), dim=1).double()
    n = first.shape[0]
    total = 0.0
    for i in range(2 * n):
        partner = (i + n) % (2 * n)
        numerator = math.exp(float(z[i] @ z[partner]) / temperature)
        others = (k for k in range(2 * n) if k != i)
        denominator = sum(math.exp(float(z[i] @ z[k]) / temperature) for k in others)
        total -= math.log(numerator / denominator)
    return total / (2 * n)


def test_simclr_loss_equals_nt_xent_written_out() -> None:
    generator = torch.Generator().manual_seed(0)
    first, second = torch.randn(5, 7, generator=generator), torch.randn(5, 7, generator=generator)
    for temperature in (0.1, 0.5):
        loss = float(simclr_loss(first, second, temperature=temperature))
        assert loss == pytest.approx(_nt_xent_reference(first, second, temperature), rel=1e-5)
    # Views that agree score lower than views that do not.
    assert simclr_loss(first, first, temperature=0.1) < simclr_loss(first, second, temperature=0.1)


def test_simclr_default_views_add_a_zoom() -> None:
    chain = default_augmentations(d4_invariant=True, self_supervised=True)
    assert set(SELF_SUPERVISED_AUGMENT) <= set(chain)
    assert not set(SELF_SUPERVISED_AUGMENT) & set(default_augmentations(d4_invariant=True))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("simclr")
    config = _config(encoder="hg-d4", objective="simclr", epochs=3, lr=3e-3, augment=None)
    return out, train_encoder(_tiles(n_slides=8, per_slide=4), config, out)


def test_simclr_never_reads_labels(tmp_path: Path) -> None:
    tiles = _tiles(n_slides=6, per_slide=4)
    config = _config(objective="simclr", epochs=2)
    a = train_encoder(tiles, config, tmp_path / "a")
    relabelled = tiles.subset(np.arange(len(tiles)))
    object.__setattr__(relabelled, "label", np.full(len(tiles), "anything"))
    b = train_encoder(relabelled, config, tmp_path / "b")
    for key, value in a.encoder.module.state_dict().items():
        torch.testing.assert_close(b.encoder.module.state_dict()[key], value, rtol=0, atol=0)


def test_simclr_keeps_the_lowest_validation_loss(pretrained: tuple[Path, object]) -> None:
    out, result = pretrained
    history = result.history  # type: ignore[attr-defined]
    losses = [h["val_loss"] for h in history]
    assert all(np.isfinite(losses)) and all(h["val_balanced_accuracy"] is None for h in history)
    assert result.best_epoch == int(np.argmin(losses)) + 1  # type: ignore[attr-defined]
    assert result.val_loss == pytest.approx(min(losses))  # type: ignore[attr-defined]
    assert result.val_balanced_accuracy is None  # type: ignore[attr-defined]
    provenance = json.loads((out / "encoder.json").read_text())
    assert provenance["config"]["objective"] == "simclr"
    assert provenance["classes"] == []
    assert "zoom:3" in provenance["augmentation"]


def test_simclr_weights_load_and_stay_d4_invariant(pretrained: tuple[Path, object]) -> None:
    out, result = pretrained
    loaded = load_encoder("hg-d4", weights=out / "encoder.safetensors")
    tiles = _tiles(n_slides=2, per_slide=2).load()
    before = loaded.encode(tiles)
    same = result.encoder.encode(tiles)  # type: ignore[attr-defined]
    np.testing.assert_allclose(before, same, rtol=0, atol=1e-6)
    assert not np.allclose(before, load_encoder("hg-d4").encode(tiles), atol=1e-4)
    batch = torch.from_numpy(tiles).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        reference = loaded.module(batch)
        for k in range(8):
            moved = loaded.module(d4_transform(batch, k))
            assert float((moved - reference).norm() / reference.norm()) <= 1e-5


def test_simclr_warm_start_feeds_a_supervised_run(
    pretrained: tuple[Path, object], tmp_path: Path
) -> None:
    out, _ = pretrained
    result = train_encoder(
        _tiles(n_slides=8, per_slide=4),
        _config(encoder="hg-d4", epochs=1),
        tmp_path,
        weights=out / "encoder.safetensors",
    )
    provenance = json.loads((tmp_path / "encoder.json").read_text())
    assert provenance["initial_weights"] == str(out / "encoder.safetensors")
    assert result.val_balanced_accuracy is not None


def test_simclr_refuses_the_supervised_contrastive_term() -> None:
    with pytest.raises(ConfigError, match="contrastive_weight needs labels"):
        EncoderTrainingConfig(objective="simclr", contrastive_weight=0.5)
    with pytest.raises(ConfigError, match="objective"):
        EncoderTrainingConfig(objective="byol")  # type: ignore[arg-type]


def test_unlabelled_folder_reads_every_image_below_it(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for name in ("a/s1_t0.png", "a/b/s1_t1.png", "s2_t0.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not a tile")
    tiles = load_unlabelled_tiles(tmp_path, center="X", slide_pattern=r"^(s\d)_")
    assert len(tiles) == 3
    assert set(tiles.label.tolist()) == {""} and set(tiles.center.tolist()) == {"X"}
    assert sorted(tiles.slide_id.tolist()) == ["s1", "s1", "s2"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(AuditDataError, match="no tile images"):
        load_unlabelled_tiles(tmp_path / "empty")
    with pytest.raises(AuditDataError, match="not a folder"):
        load_unlabelled_tiles(tmp_path / "missing")


def test_improvement_rule_without_accuracy_is_a_lower_loss() -> None:
    from histoguard.encoders._training import _improved

    state = {"best_epoch": 2, "best_acc": None, "best_loss": 1.0}
    assert _improved(state, None, 0.9)
    assert not _improved(state, None, 1.0)
    assert not _improved(state, None, 1.1)
    assert _improved({**state, "best_epoch": 0}, None, 5.0)  # the first epoch always counts
    assert _improved(state, None, None)  # no validation: the last epoch is kept
    supervised = {"best_epoch": 2, "best_acc": 0.8, "best_loss": 0.5}
    assert _improved(supervised, 0.81, 0.9)
    assert _improved(supervised, 0.8, 0.4) and not _improved(supervised, 0.8, 0.6)
    assert not _improved(supervised, 0.79, 0.1)
