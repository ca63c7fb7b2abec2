"""The conformance kit passes every registered encoder and MIL model, and rejects broken ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from histoguard.encoders import Encoder, EncoderInfo, list_encoders
from histoguard.mil import MILModel, MILOutput, list_models
from histoguard.mil._layers import masked_mean, masked_softmax
from histoguard.testing import ConformanceError, check_encoder, check_mil_model

WEIGHTLESS_ENCODERS = [info.name for info in list_encoders() if not info.needs_weights]
MIL_MODELS = [info.name for info in list_models()]


def test_the_registries_are_covered() -> None:
    # The parametrised tests below must not silently run over nothing.
    assert {"hg-cnn", "hg-d4", "hg-handcrafted"} <= set(WEIGHTLESS_ENCODERS)
    assert {"abmil", "clam-sb", "transmil"} <= set(MIL_MODELS)


@pytest.mark.parametrize("name", WEIGHTLESS_ENCODERS)
def test_every_weightless_encoder_conforms(name: str) -> None:
    encoder = check_encoder(name, n_tiles=3)
    assert encoder.info.name == name


@pytest.mark.parametrize("name", MIL_MODELS)
def test_every_mil_model_conforms(name: str) -> None:
    model = check_mil_model(name, in_dim=8, n_classes=3)
    assert model.n_classes == 3
    assert not model.training


# --- broken encoders -----------------------------------------------------------------------------


class _Pooled(nn.Module):
    """(B, 3, S, S) -> (B, 6): channel means and standard deviations."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)


class _BatchDependent(_Pooled):
    def forward(self, x: Tensor) -> Tensor:
        out = super().forward(x)
        return out - out.mean(dim=0, keepdim=True)  # batch statistics at inference


class _Noisy(_Pooled):
    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x) + torch.rand(x.shape[0], 6)


class _WrongDim(_Pooled):
    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x)[:, :5]


class _FixedSize(_Pooled):
    def forward(self, x: Tensor) -> Tensor:
        if x.shape[2] != 32:
            raise RuntimeError("needs 32 px")
        return super().forward(x)


def _encoder(module: nn.Module, *, resize: bool = True) -> Encoder:
    info = EncoderInfo(
        name=f"broken-{type(module).__name__}", embed_dim=6, input_size=32, factory=_no_factory
    )
    encoder = Encoder(info, module)
    if not resize:
        encoder.preprocess = _no_resize(encoder)  # type: ignore[method-assign]
    return encoder


def _no_factory(weights: Path | None, *, allow_pickle: bool) -> nn.Module:
    raise NotImplementedError


def _no_resize(encoder: Encoder) -> Any:
    def preprocess(tiles: np.ndarray) -> Tensor:
        return torch.from_numpy(tiles).permute(0, 3, 1, 2).float() / 255.0

    return preprocess


def test_a_well_behaved_custom_encoder_passes() -> None:
    check_encoder(_encoder(_Pooled()))


@pytest.mark.parametrize(
    ("module", "resize", "prop"),
    [
        (_BatchDependent(), True, "batch independence"),
        (_Noisy(), True, "determinism"),
        (_WrongDim(), True, "output shape"),
        (_FixedSize(), False, "tiles of 64 px"),
    ],
)
def test_a_broken_encoder_is_rejected(module: nn.Module, resize: bool, prop: str) -> None:
    with pytest.raises(ConformanceError, match=f"{prop} fails") as caught:
        check_encoder(_encoder(module, resize=resize))
    assert caught.value.prop == prop
    assert isinstance(caught.value, AssertionError)


def test_an_encoder_left_in_training_mode_is_rejected() -> None:
    encoder = _encoder(_Pooled())
    encoder.module.train()
    with pytest.raises(ConformanceError, match="evaluation mode"):
        check_encoder(encoder)


# --- broken MIL models ---------------------------------------------------------------------------


class _GoodMIL(MILModel):
    """Attention pooling that keeps the contract (unregistered, so config() cannot rebuild it)."""

    def __init__(self, in_dim: int, n_classes: int) -> None:
        super().__init__(in_dim, n_classes)
        self.score = nn.Linear(in_dim, 1)
        self.head = nn.Linear(in_dim, n_classes)

    def _forward(self, features: Tensor, mask: Tensor) -> MILOutput:
        attention = masked_softmax(self.score(features)[:, :, 0], mask)  # (B, N)
        pooled = (attention[:, :, None] * features).sum(dim=1)
        return MILOutput(logits=self.head(pooled), attention=attention)


class _IgnoresMask(_GoodMIL):
    def _forward(self, features: Tensor, mask: Tensor) -> MILOutput:
        pooled = features.mean(dim=1)  # padding counts as instances
        return MILOutput(logits=self.head(pooled))


class _UnnormalisedAttention(_GoodMIL):
    def _forward(self, features: Tensor, mask: Tensor) -> MILOutput:
        out = super()._forward(features, mask)
        assert out.attention is not None
        return MILOutput(logits=out.logits, attention=out.attention * 2)


class _DeadParameter(_GoodMIL):
    def __init__(self, in_dim: int, n_classes: int) -> None:
        super().__init__(in_dim, n_classes)
        self.unused = nn.Linear(in_dim, 4)


class _OrderDependent(_GoodMIL):
    def _forward(self, features: Tensor, mask: Tensor) -> MILOutput:
        out = super()._forward(features, mask)
        return MILOutput(logits=out.logits + features[:, 0, :1], attention=out.attention)


class _MeanNoAttention(MILModel):
    def __init__(self, in_dim: int, n_classes: int) -> None:
        super().__init__(in_dim, n_classes)
        self.head = nn.Linear(in_dim, n_classes)

    def _forward(self, features: Tensor, mask: Tensor) -> MILOutput:
        return MILOutput(logits=self.head(masked_mean(features, mask)))


@pytest.mark.parametrize(
    ("cls", "prop"),
    [
        (_IgnoresMask, "mask respected"),
        (_UnnormalisedAttention, "attention sums to 1"),
        (_DeadParameter, "gradients reach every parameter"),
        (_OrderDependent, "permutation invariance"),
        (_GoodMIL, "config rebuilds the model"),  # not registered
    ],
)
def test_a_broken_mil_model_is_rejected(cls: type[MILModel], prop: str) -> None:
    with pytest.raises(ConformanceError, match=f"{prop} fails") as caught:
        check_mil_model(cls)
    assert caught.value.prop == prop


def test_a_model_that_does_not_claim_order_invariance_is_not_checked_for_it() -> None:
    # Without the claim the order check is skipped, so the next property (config) is reached.
    with pytest.raises(ConformanceError, match="config rebuilds the model"):
        check_mil_model(_OrderDependent, permutation_invariant=False)


def test_a_model_without_attention_is_checked_on_its_logits() -> None:
    with pytest.raises(ConformanceError, match="config rebuilds the model"):
        check_mil_model(_MeanNoAttention(in_dim=5, n_classes=2))
