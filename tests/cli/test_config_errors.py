"""Every configuration class and loader raises ConfigError (also a ValueError) for an invalid
value, naming the setting and the value; the device check says how to fix it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from histoguard.errors import ConfigError, HistoguardError
from histoguard.features import ExtractionConfig
from histoguard.mil import TrainConfig, load_train_config
from histoguard.robustness import (
    APDConfig,
    AttackSettings,
    AuditConfig,
    ClusteringConfig,
    PGDConfig,
    RobustnessIndexConfig,
    SlideAttackConfig,
    StressConfig,
    UniversalConfig,
)
from histoguard.slide import TilingConfig, TissueParams

_PATHS: dict[str, Any] = {"cohort": Path("c.csv"), "features": Path("f"), "out": Path("o")}

#: (id, a call that must fail, words the message must contain)
INVALID: list[tuple[str, Callable[[], object], tuple[str, ...]]] = [
    ("tiling mpp", lambda: TilingConfig(mpp=0), ("mpp", "0")),
    ("tiling overlap", lambda: TilingConfig(tile_size=8, overlap=8), ("overlap", "8")),
    ("tiling tissue", lambda: TilingConfig(min_tissue_fraction=2), ("min_tissue_fraction",)),
    ("tiling thumbnail", lambda: TilingConfig(thumbnail_size=8), ("thumbnail_size", "8")),
    ("tiling backend", lambda: TilingConfig(backend="nope"), ("backend", "nope")),
    ("tissue area", lambda: TissueParams(min_tissue_area_um2=-1), ("min_tissue_area_um2",)),
    ("tissue cut", lambda: TissueParams(max_brightness=3), ("max_brightness", "3")),
    ("tissue floor", lambda: TissueParams(saturation_floor=0.5), ("saturation_floor",)),
    ("tissue scale", lambda: TissueParams(working_um_per_px=0), ("working_um_per_px",)),
    ("extraction batch", lambda: ExtractionConfig(encoder="hg-cnn", batch_size=0), ("batch_size",)),
    ("extraction stain", lambda: ExtractionConfig(encoder="x", stain_normalize="macenko"),
     ("stain_reference",)),
    ("extraction device", lambda: ExtractionConfig(encoder="x", device="nonsense"),
     ("nonsense",)),
    ("train epochs", lambda: TrainConfig(**_PATHS, epochs=0), ("epochs", "0")),
    ("train k", lambda: TrainConfig(**_PATHS, k=1), ("k", "1")),
    ("train split", lambda: TrainConfig(**_PATHS, split="random"), ("split", "random")),  # type: ignore[arg-type]
    ("train threshold", lambda: TrainConfig(**_PATHS, threshold=1.5), ("threshold", "1.5")),
    ("train lr", lambda: TrainConfig(**_PATHS, lr=0), ("lr",)),
    ("train model", lambda: TrainConfig(**_PATHS, model="abmill"), ("abmill", "abmil")),
    ("train kwargs", lambda: TrainConfig(**_PATHS, model_kwargs={"hiden_dim": 3}),
     ("hiden_dim", "hidden_dim")),
    ("train kwargs value", lambda: TrainConfig(**_PATHS, model="transmil",
                                               model_kwargs={"hidden_dim": 30, "n_heads": 4}),
     ("divisible",)),
    ("ri k", lambda: RobustnessIndexConfig(k=5, max_k=2), ("k", "5")),
    ("ri confidence", lambda: RobustnessIndexConfig(confidence=1), ("confidence",)),
    ("clustering k", lambda: ClusteringConfig(k_min=1), ("k_min",)),
    ("apd fraction", lambda: APDConfig(train_fraction=1), ("train_fraction",)),
    ("stress tolerance", lambda: StressConfig(tolerance=1.5), ("tolerance", "1.5")),
    ("stress severities", lambda: StressConfig(severities=(0,)), ("severities",)),
    ("pgd norm", lambda: PGDConfig(norm="l3"), ("norm", "l3")),  # type: ignore[arg-type]
    ("pgd eps", lambda: PGDConfig(eps=-1), ("eps", "-1")),
    ("pgd steps", lambda: PGDConfig(steps=0), ("steps", "0")),
    ("universal epochs", lambda: UniversalConfig(epochs=0), ("epochs",)),
    ("slide fraction", lambda: SlideAttackConfig(fraction=2), ("fraction", "2")),
    ("slide selection", lambda: SlideAttackConfig(selection="best"), ("selection",)),  # type: ignore[arg-type]
    ("attacks eps", lambda: AttackSettings(pgd_eps=(8.0,)), ("pgd_eps", "8.0")),
    ("attacks eps nan", lambda: AttackSettings(slide_eps=float("nan")), ("slide_eps",)),
    ("attacks fraction", lambda: AttackSettings(slide_fraction=0), ("slide_fraction",)),
    ("attacks norm", lambda: AttackSettings(pgd_norms=("l1",)), ("pgd_norms",)),  # type: ignore[arg-type]
    ("audit parts", lambda: AuditConfig(parts=("apdd",)), ("apdd",)),
    ("audit probe", lambda: AuditConfig(probe_train_fraction=0), ("probe_train_fraction",)),
]  # fmt: skip


@pytest.mark.parametrize(("make", "words"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_config_classes_raise_config_error(
    make: Callable[[], object], words: tuple[str, ...]
) -> None:
    with pytest.raises(ConfigError) as info:
        make()
    assert isinstance(info.value, ValueError) and isinstance(info.value, HistoguardError)
    for word in words:
        assert word in str(info.value), str(info.value)


def test_valid_defaults_still_build() -> None:
    for cls in (TilingConfig, TissueParams, RobustnessIndexConfig, ClusteringConfig, APDConfig,
                StressConfig, PGDConfig, UniversalConfig, SlideAttackConfig, AttackSettings,
                AuditConfig):  # fmt: skip
        cls()
    TrainConfig(**_PATHS, model="transmil", model_kwargs={"hidden_dim": 32, "n_heads": 4})


# --------------------------------------------------------------------------- load_train_config


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "train.yaml"
    path.write_text("cohort: c.csv\nfeatures: f\nout: o\n" + text)
    return path


def test_load_train_config_reads_and_converts(tmp_path: Path) -> None:
    text = "epochs: 3\nlr: 2e-4\nweight_decay: 0\nmax_instances: null\n"
    config = load_train_config(_write(tmp_path, text), k=4)
    assert config.epochs == 3 and config.k == 4 and config.max_instances is None
    assert config.lr == 2e-4 and isinstance(config.weight_decay, float)
    assert config.out == Path("o")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("epochs: two\n", ("epochs", "'two'", "an integer")),
        ("epochs: 2.5\n", ("epochs", "2.5")),
        ("class_balanced: maybe\n", ("class_balanced", "true or false")),
        ("model_kwargs: [1]\n", ("model_kwargs", "a mapping")),
        ("lr: fast\n", ("lr", "a number")),
        ("epochs: 0\n", ("epochs must be >= 1",)),
        ("epoch: 3\n", ("'epoch'", "Did you mean 'epochs'")),
        ("model: dsmill\n", ("'dsmill'", "Did you mean 'dsmil'", "abmil")),
        ("model_kwargs: {hidden: 3}\n", ("'hidden'", "hidden_dim", "attention_dim")),
        ("- just\n- a list\n", ("expected a mapping",)),
        ("epochs: [3\n", ("not valid YAML", "line 5, column 1")),
    ],
)
def test_load_train_config_names_the_file_and_setting(
    tmp_path: Path, text: str, words: tuple[str, ...]
) -> None:
    path = _write(tmp_path, text) if not text.startswith("-") else tmp_path / "list.yaml"
    if text.startswith("-"):
        path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_train_config(path)
    assert str(path) in str(info.value)
    for word in words:
        assert word in str(info.value), str(info.value)


def test_load_train_config_missing_file_and_settings(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no-such.yaml: config file not found"):
        load_train_config(tmp_path / "no-such.yaml")
    with pytest.raises(ConfigError, match=r"missing training settings \['features', 'out'\]"):
        load_train_config(None, cohort=Path("c.csv"))


def test_type_table_covers_every_train_setting() -> None:
    from histoguard.mil._config_checks import _FIELD_KINDS

    assert set(_FIELD_KINDS) == {f.name for f in fields(TrainConfig)}


# --------------------------------------------------------------------------- devices


def test_check_device_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    from histoguard.core._device import check_device

    assert check_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="use --device cpu, or install a CUDA build of torch"):
        check_device("cuda")
    with pytest.raises(ConfigError, match="'cuda:1'"):
        check_device("cuda:1")
    with pytest.raises(ConfigError, match="not a torch device"):
        check_device("gpu")


def test_check_device_without_mps(monkeypatch: pytest.MonkeyPatch) -> None:
    from histoguard.core._device import check_device

    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="MPS is not available here; use --device cpu"):
        check_device("mps")


def test_cuda_index_beyond_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    from histoguard.core._device import check_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert check_device("cuda:0") == "cuda:0"
    with pytest.raises(ConfigError, match="1 CUDA device"):
        check_device("cuda:3")


def test_every_device_taker_uses_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    from histoguard.encoders import load_encoder
    from histoguard.robustness.metrics._neighbours import nearest_neighbours

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="CUDA"):
        ExtractionConfig(encoder="hg-cnn", device="cuda")
    with pytest.raises(ConfigError, match="CUDA"):
        load_encoder("hg-cnn", device="cuda")
    with pytest.raises(ConfigError, match="CUDA"):
        nearest_neighbours(np.eye(3, dtype=np.float32), 1, device="cuda")
