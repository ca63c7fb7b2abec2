"""End-to-end encoder + MIL training from slide labels, on tiny synthetic tile folders.

Bags are folders of 32x32 PNG tiles: benign tiles are smooth pink, a positive bag has a share of
dark, textured purple tiles. A tiny D4 encoder (32 px input, not registered) keeps the training
tests fast; the registered ``hg-d4`` and ``hg-cnn`` are used where the saved weights must load
through the registry.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from histoguard.cli import app
from histoguard.encoders import Encoder, EncoderInfo, load_encoder
from histoguard.encoders._d4 import D4InvariantCNN, d4_transform
from histoguard.errors import ConfigError
from histoguard.features import ExtractionConfig, extract_features, read_feature_file
from histoguard.mil import (
    EndToEndConfig,
    Split,
    StepSettings,
    build_model,
    fit_end_to_end,
    load_models,
    predict,
    train_end_to_end,
)
from histoguard.mil._end_to_end_step import (
    BagEncoder,
    calibrate_batchnorm,
    choose_gradient_rows,
    train_step,
)
from histoguard.slide import TileFolder

TILE = 32


def _tile(rng: np.random.Generator, positive: bool) -> np.ndarray:
    if positive:
        base = np.array([90, 40, 140], dtype=float)
        noise = rng.normal(0, 45, (TILE, TILE, 1))
    else:
        base = np.array([235, 170, 200], dtype=float)
        noise = rng.normal(0, 6, (TILE, TILE, 1))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def _write_bag(folder: Path, n_tiles: int, n_positive: int, seed: int) -> TileFolder:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_tiles):
        Image.fromarray(_tile(rng, i < n_positive)).save(folder / f"t{i:04d}.png")
    return TileFolder.open(folder)


def _cohort(root: Path, n_slides: int, n_tiles: int = 8) -> tuple[Path, Path]:
    """``n_slides`` bags, alternating labels, with a cohort table (patient = slide)."""
    tiles = root / "tiles"
    rows = []
    for i in range(n_slides):
        label = "tumour" if i % 2 else "normal"
        _write_bag(tiles / f"s{i:02d}", n_tiles, n_tiles // 2 if i % 2 else 0, seed=i)
        rows.append({"slide_id": f"s{i:02d}", "patient_id": f"p{i:02d}", "label": label})
    table = root / "cohort.csv"
    with table.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["slide_id", "patient_id", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return table, tiles


def _tiny_encoder() -> Encoder:
    torch.manual_seed(0)
    info = EncoderInfo(
        name="tiny-d4",
        embed_dim=16,
        input_size=TILE,
        factory=lambda weights, *, allow_pickle: D4InvariantCNN(16),
    )
    return Encoder(info, D4InvariantCNN(embed_dim=16, widths=(4, 4, 8, 8, 8)))


def _config(tmp_path: Path, **changes: object) -> EndToEndConfig:
    values: dict[str, object] = {
        "cohort": tmp_path / "cohort.csv", "tiles": tmp_path / "tiles", "out": tmp_path / "out",
        "model_kwargs": {"hidden_dim": 16, "attention_dim": 8, "dropout": 0.0}, "n_boot": 20,
    }  # fmt: skip
    values.update(changes)
    return EndToEndConfig(**values)  # type: ignore[arg-type]


def _setup(
    encoder: Encoder, settings: StepSettings
) -> tuple[BagEncoder, torch.nn.Module, torch.optim.Optimizer]:
    bag_encoder = BagEncoder(encoder, settings)
    model = build_model("abmil", in_dim=encoder.embed_dim, n_classes=2, dropout=0.0)
    params = [*encoder.module.parameters(), *model.parameters()]
    return bag_encoder, model, torch.optim.SGD(params, lr=0.0)


class _EncoderCalls:
    """Tiles the encoder module saw per call, split by whether gradients were recorded."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.with_grad: list[int] = []
        self.without_grad: list[int] = []
        self.handle = module.register_forward_hook(self._record)

    def _record(self, module: torch.nn.Module, inputs: tuple[torch.Tensor], output: object) -> None:
        (self.with_grad if torch.is_grad_enabled() else self.without_grad).append(len(inputs[0]))


def test_gradients_reach_the_encoder_only_through_the_subset(tmp_path: Path) -> None:
    folder = _write_bag(tmp_path / "bag", 24, 6, seed=1)
    encoder = _tiny_encoder()
    settings = StepSettings(tiles_with_grad=6, grad_chunk=4, checkpointing=False)
    bag_encoder, model, optimiser = _setup(encoder, settings)
    features = bag_encoder.encode(folder, list(range(24)))
    with torch.no_grad():
        model.eval()
        attention = model(features[None], torch.ones(1, 24, dtype=torch.bool)).attention[0]
    calls = _EncoderCalls(encoder.module)
    stats = train_step(
        bag_encoder, model, folder, 1, optimiser=optimiser, generator=torch.Generator()
    )  # type: ignore[arg-type]
    calls.handle.remove()
    assert sum(calls.without_grad) == 24  # every tile once, without a graph
    assert sum(calls.with_grad) == 6 and max(calls.with_grad) <= 4  # the subset, in micro-batches
    assert len(set(stats.grad_rows.tolist())) == 6
    top = set(torch.topk(attention, 3).indices.tolist())
    assert top <= set(stats.grad_rows.tolist())  # the top-attended half is in the subset
    grads = [p.grad for p in encoder.module.parameters()]
    assert all(g is not None for g in grads) and any(float(g.abs().sum()) > 0 for g in grads)  # type: ignore[union-attr]


def test_choose_gradient_rows_mixes_top_and_random() -> None:
    attention = torch.zeros(100)
    attention[[5, 50, 70]] = torch.tensor([0.3, 0.2, 0.1])
    draws = [
        choose_gradient_rows(100, 6, torch.Generator().manual_seed(s), attention) for s in range(5)
    ]
    for rows in draws:
        assert len(rows) == 6 and len(set(rows.tolist())) == 6
        assert {5, 50, 70} <= set(rows.tolist())
    assert len({tuple(r.tolist()) for r in draws}) > 1  # the random half changes
    assert choose_gradient_rows(4, 6, torch.Generator()).tolist() == [0, 1, 2, 3]
    no_attention = choose_gradient_rows(100, 6, torch.Generator().manual_seed(0))
    assert len(set(no_attention.tolist())) == 6


def _step_saved_bytes(folder: TileFolder, settings: StepSettings) -> int:
    encoder = _tiny_encoder()
    bag_encoder, model, optimiser = _setup(encoder, settings)
    sizes: list[int] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        sizes.append(tensor.numel() * tensor.element_size())
        return tensor

    calls = _EncoderCalls(encoder.module)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        train_step(bag_encoder, model, folder, 1, optimiser=optimiser, generator=torch.Generator())  # type: ignore[arg-type]
    calls.handle.remove()
    assert sum(calls.with_grad) == settings.tiles_with_grad
    return sum(sizes)


def test_memory_kept_for_backward_does_not_grow_with_the_bag(tmp_path: Path) -> None:
    small = _write_bag(tmp_path / "small", 20, 5, seed=2)
    large = _write_bag(tmp_path / "large", 200, 50, seed=3)
    plain = StepSettings(tiles_with_grad=8, checkpointing=False)
    one_tile = _step_saved_bytes(small, StepSettings(tiles_with_grad=1, checkpointing=False))
    per_grad_tile = (_step_saved_bytes(small, plain) - one_tile) / 7  # encoder cost of a tile
    growth = (_step_saved_bytes(large, plain) - _step_saved_bytes(small, plain)) / 180
    # An extra bag tile costs the head a few hundred bytes; a gradient tile costs the encoder
    # its whole activation stack.
    assert per_grad_tile > 10_000
    assert growth < 0.05 * per_grad_tile, (growth, per_grad_tile)
    checkpointed = StepSettings(tiles_with_grad=8, grad_chunk=2, checkpointing=True)
    assert _step_saved_bytes(large, checkpointed) < _step_saved_bytes(large, plain) / 4


def test_loss_decreases_on_a_learnable_task(tmp_path: Path) -> None:
    _, tiles = _cohort(tmp_path, 8, n_tiles=8)
    folders = {p.name: TileFolder.open(p) for p in sorted(tiles.iterdir())}
    labels = {slide_id: int(slide_id[-1]) % 2 for slide_id in folders}
    ids = tuple(sorted(folders))
    split = Split(name="all", train=ids, val=ids, test=())
    encoder = _tiny_encoder()
    before = {k: v.clone() for k, v in encoder.module.state_dict().items()}
    config = _config(
        tmp_path, epochs=6, patience=6, lr_encoder=1e-3, lr_head=1e-3, tiles_with_grad=4
    )
    _, history = fit_end_to_end(encoder, folders, labels, split, config, n_classes=2)
    assert min(history.val_loss) < 0.6 * history.val_loss[0], history
    assert history.train_loss[-1] < history.train_loss[0], history
    changed = [k for k, v in encoder.module.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.endswith("weight") for k in changed)  # the encoder itself was trained


def test_batchnorm_calibration_freezes_statistics_from_training_tiles(tmp_path: Path) -> None:
    folder = _write_bag(tmp_path / "bag", 8, 4, seed=4)
    encoder = _tiny_encoder()
    bag_encoder = BagEncoder(encoder, StepSettings())
    assert calibrate_batchnorm(bag_encoder, [(folder, list(range(8)))]) == 6
    norm = next(m for m in encoder.module.modules() if isinstance(m, torch.nn.BatchNorm3d))
    assert not torch.allclose(norm.running_mean, torch.zeros_like(norm.running_mean))
    assert not encoder.module.training
    first = bag_encoder.encode(folder, list(range(8)))
    again = bag_encoder.encode(folder, [3, 4])  # another chunking, same embeddings
    torch.testing.assert_close(again, first[3:5], rtol=0, atol=1e-6)


def _run(tmp_path: Path, encoder: str, **changes: object) -> tuple[Path, EndToEndConfig]:
    table, _ = _cohort(tmp_path, 6, n_tiles=8)
    config = _config(
        tmp_path, cohort=table, encoder=encoder, k=3, epochs=1, tiles_with_grad=4,
        calibration_tiles=24, lr_encoder=1e-3, **changes,
    )  # fmt: skip
    result = train_end_to_end(config)
    return result.out, config


def test_trained_hg_d4_loads_reproduces_and_stays_invariant(tmp_path: Path) -> None:
    out, config = _run(tmp_path, "hg-d4", chunk=16)
    for name in ("config.json", "splits.json", "encoder.json", "predictions.csv",
                 "metrics.json", "metrics.txt", "fold_0/model.json"):  # fmt: skip
        assert (out / name).is_file(), name
    provenance = json.loads((out / "encoder.json").read_text())
    model_json = json.loads((out / "fold_0" / "model.json").read_text())
    assert model_json["provenance"]["weights_sha256"] == provenance["weights_sha256"]
    assert model_json["provenance"]["encoder"] == "hg-d4"
    random_init = load_encoder("hg-d4")
    trained = load_encoder("hg-d4", weights=out / "encoder.safetensors")
    changed = any(
        not torch.equal(a, b)
        for a, b in zip(random_init.module.parameters(), trained.module.parameters(), strict=True)
    )
    assert changed
    folder = TileFolder.open(tmp_path / "tiles" / "s01")
    # What extract computes: tiles read at the encoder's size by its resize, then encode().
    tiles, _ = folder.read(range(4), size=trained.info.input_size, resize=trained.info.resize)
    extracted = torch.from_numpy(trained.encode(tiles))
    training_code = BagEncoder(trained, config.step_settings()).encode(folder, [0, 1, 2, 3])
    torch.testing.assert_close(extracted, training_code, rtol=0, atol=1e-6)
    batch = trained.preprocess(tiles[:2])
    with torch.no_grad():
        reference = trained.module(batch)
        for g in range(8):
            turned = trained.module(d4_transform(batch, g))
            relative = float((turned - reference).norm() / reference.norm())
            assert relative <= 1e-5, (g, relative)
    models, labels, _ = load_models(out)
    assert labels == ["normal", "tumour"]
    assert models.in_dim == 128
    # The real pipeline: extract with the trained weights, then predict with the trained head.
    settings = ExtractionConfig(encoder="hg-d4", weights=out / "encoder.safetensors", readers=0)
    extract_features([folder.path], tmp_path / "features", settings)
    stored = read_feature_file(tmp_path / "features" / "s01.h5")
    full = BagEncoder(trained, config.step_settings()).encode(folder, list(range(len(folder))))
    np.testing.assert_allclose(stored.features, full.numpy(), rtol=0, atol=1e-6)
    predictions = predict(out, [tmp_path / "features" / "s01.h5"], tmp_path / "pred")
    assert len(predictions) == 1


def test_cli_train_end_to_end(tmp_path: Path) -> None:
    table, tiles = _cohort(tmp_path, 6, n_tiles=8)
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app,
        ["train-end-to-end", "--cohort", str(table), "--tiles", str(tiles), "--encoder", "hg-cnn",
         "--model", "abmil", "--out", str(out), "--epochs", "1", "--k", "3",
         "--tiles-with-grad", "4", "--n-boot", "20", "--quiet"],
        prog_name="histoguard",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (out / "encoder.safetensors").is_file() and (
        out / "fold_0" / "model.safetensors"
    ).is_file()
    rows = (out / "predictions.csv").read_text().splitlines()
    assert rows[0] == "fold,slide_id,center,label,p_normal,p_tumour" and len(rows) == 3


def test_cli_errors_name_the_problem(tmp_path: Path) -> None:
    table, tiles = _cohort(tmp_path, 4, n_tiles=2)
    (tiles / "s03" / "t0000.png").unlink()
    (tiles / "s03" / "t0001.png").unlink()
    result = CliRunner().invoke(
        app,
        ["train-end-to-end", "--cohort", str(table), "--tiles", str(tiles),
         "--out", str(tmp_path / "o"), "--encoder", "hg-handcrafted"],
        prog_name="histoguard",
    )  # fmt: skip
    assert result.exit_code == 1
    assert "train-end-to-end: error:" in result.output and "s03" in result.output
    assert "Traceback" not in result.output


def test_untrainable_encoder_is_refused(tmp_path: Path) -> None:
    table, _ = _cohort(tmp_path, 4, n_tiles=2)
    config = _config(tmp_path, cohort=table, encoder="hg-handcrafted", k=2)
    with pytest.raises(ConfigError, match="no trainable"):
        train_end_to_end(config)


@pytest.mark.parametrize(
    ("changes", "word"),
    [({"tiles_with_grad": 0}, "tiles_with_grad"), ({"fold": 5, "k": 5}, "fold"),
     ({"lr_encoder": 0.0}, "lr_encoder"), ({"split": "loco"}, "split"),
     ({"max_tiles_per_bag": 0}, "max_tiles_per_bag")],
)  # fmt: skip
def test_config_checks(tmp_path: Path, changes: dict[str, object], word: str) -> None:
    with pytest.raises(ConfigError, match=word):
        _config(tmp_path, **changes)
