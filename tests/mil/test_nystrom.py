"""Nyström attention for TransMIL: the original algorithm, padding-free, linear in the bag."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from histoguard.mil import build_model, load_model, save_model
from histoguard.mil._nystrom import NystromAttention, iterative_pinv


def test_iterative_pinv_inverts_a_softmax_matrix() -> None:
    gen = torch.Generator().manual_seed(0)
    matrix = torch.randn(2, 3, 8, 8, generator=gen, dtype=torch.float64).softmax(dim=-1)
    inverse = iterative_pinv(matrix, 20)
    identity = torch.eye(8, dtype=torch.float64).expand_as(matrix)
    assert torch.allclose(matrix @ inverse, identity, atol=1e-6)


@pytest.mark.parametrize("n", [64, 100, 7])  # a multiple of the landmarks, front padding, n < m
def test_nystrom_attention_equals_torchmil_with_the_same_weights(n: int) -> None:
    peer = pytest.importorskip("torchmil.nn.attention")
    torch.manual_seed(0)
    ours = NystromAttention(32, 4, 16, 6, dropout=0.0)
    theirs = peer.NystromAttention(32, 32, att_dim=32, n_heads=4, n_landmarks=16)
    with torch.no_grad():  # torchmil has no output projection and no value convolution
        theirs.qkv_nn.weight.copy_(ours.qkv.weight)
        ours.out[0].weight.copy_(torch.eye(32))
        ours.out[0].bias.zero_()
        ours.residual.weight.zero_()
    tokens = torch.randn(1, n, 32)
    got, row = ours(tokens, query_row=0)
    want, attention = theirs(tokens, return_att=True)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-4)
    assert torch.allclose(row, attention.mean(dim=1)[:, 0], atol=1e-5, rtol=1e-4)


def test_nystrom_transmil_ignores_padding_and_batch_neighbours() -> None:
    torch.manual_seed(0)
    model = build_model("transmil", in_dim=8, n_classes=2, hidden_dim=16, attention="nystrom")
    model.eval()
    short, long = torch.randn(1, 30, 8), torch.randn(1, 45, 8)
    features = torch.full((2, 45, 8), float("nan"))  # NaN padding must not leak either
    features[0, :30], features[1] = short[0], long[0]
    mask = torch.zeros(2, 45, dtype=torch.bool)
    mask[0, :30], mask[1] = True, True
    with torch.no_grad():
        batched = model(features, mask)
        alone = model(short, torch.ones(1, 30, dtype=torch.bool))
    assert batched.attention is not None and alone.attention is not None
    assert torch.allclose(batched.logits[0], alone.logits[0], atol=1e-5)
    assert torch.allclose(batched.attention[0, :30], alone.attention[0], atol=1e-5)
    assert torch.all(batched.attention[0, 30:] == 0)
    assert torch.allclose(batched.attention.sum(dim=1), torch.ones(2), atol=1e-5)
    assert torch.all(batched.attention >= 0)


def test_nystrom_memory_grows_linearly_with_the_bag() -> None:
    """The largest intermediate is (heads, n, landmarks), never (n, n): checked by the
    autograd graph's saved tensors at two bag sizes."""

    def largest_saved(n: int) -> int:
        torch.manual_seed(0)
        model = build_model("transmil", in_dim=8, n_classes=2, hidden_dim=16, attention="nystrom")
        sizes: list[int] = []

        def pack(t: torch.Tensor) -> torch.Tensor:
            sizes.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(torch.randn(1, n, 8), torch.ones(1, n, dtype=torch.bool)).logits.sum()
        return max(sizes)

    small, large = largest_saved(1024), largest_saved(4096)
    assert large <= 4.5 * small  # quadratic attention would be 16x
    assert large < 4096 * 4096


OLD_SAVE = Path(__file__).parent / "data" / "transmil-exact-v1"


def test_a_transmil_saved_before_the_option_loads_and_predicts_the_same() -> None:
    """``OLD_SAVE`` was written by the code before Nyström attention existed, with the
    predictions it made on a seeded input (``expected.json``)."""
    model, labels = load_model(OLD_SAVE)
    expected = json.loads((OLD_SAVE / "expected.json").read_text())
    x = torch.randn(1, 20, 8, generator=torch.Generator().manual_seed(1))
    probs, attention = model.predict(x, torch.ones(1, 20, dtype=torch.bool))
    assert labels == ["a", "b"]
    # Float32 kernels differ in the last bits across CPUs (vector width, BLAS path): compare
    # to 1e-6, far below any change a different architecture or a lost weight would make.
    torch.testing.assert_close(probs[0], torch.tensor(expected["probabilities"]), rtol=0, atol=1e-6)
    assert attention is not None
    torch.testing.assert_close(attention[0], torch.tensor(expected["attention"]), rtol=0, atol=1e-6)
    assert model.config() == json.loads((OLD_SAVE / "model.json").read_text())["model"]


def test_nystrom_transmil_saves_its_settings_and_reloads(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("transmil", in_dim=8, n_classes=2, hidden_dim=16, attention="nystrom")
    assert model.config()["n_landmarks"] == 8  # hidden_dim // 2, as in the original
    save_model(model, tmp_path / "n", labels=["a", "b"])
    again, _ = load_model(tmp_path / "n")
    x, mask = torch.randn(1, 20, 8), torch.ones(1, 20, dtype=torch.bool)
    assert torch.equal(again.predict(x, mask)[0], model.predict(x, mask)[0])
    with pytest.raises(ValueError, match="attention must be"):
        build_model("transmil", in_dim=8, n_classes=2, attention="linear")
