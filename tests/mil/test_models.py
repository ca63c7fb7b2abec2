"""Every registered MIL model keeps the contract: masking, loss, predict, config, learning."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.stats import rankdata

from histoguard.errors import UnknownNameError
from histoguard.mil import MILModel, MILOutput, build_model, get_model_info, list_models

#: Every registered model, and TransMIL with Nyström attention (4 landmarks: bags of 5-15
#: instances then have several tokens per landmark segment and front padding).
MODEL_NAMES = [info.name for info in list_models()] + ["transmil+nystrom"]
VARIANTS = {"transmil+nystrom": ("transmil", {"attention": "nystrom", "n_landmarks": 4})}
DIM = 32
SIZES = (5, 9, 7)  # real instances per bag; padded to 9


def _bags(sizes: tuple[int, ...] = SIZES, extra: int = 0, seed: int = 0) -> tuple:
    """Random ``features (B, N, DIM)`` and ``mask (B, N)``, padding filled with random values."""
    gen = torch.Generator().manual_seed(seed)
    n = max(sizes) + extra
    features = torch.randn(len(sizes), n, DIM, generator=gen)
    mask = torch.arange(n)[None, :] < torch.tensor(sizes)[:, None]
    return features, mask


def _build(name: str, n_classes: int = 2) -> MILModel:
    torch.manual_seed(0)
    registered, kwargs = VARIANTS.get(name, (name, {}))
    return build_model(registered, in_dim=DIM, n_classes=n_classes, **kwargs)


def test_registry_lists_every_model_with_metadata() -> None:
    expected = {"abmil", "clam-mb", "clam-sb", "dsmil", "max-pool", "mean-pool", "topk", "transmil"}
    registered = [info.name for info in list_models()]
    assert expected <= set(registered)
    assert sorted(registered) == registered
    for name in registered:
        info = get_model_info(name)
        assert info.description and info.citation and info.to_dict()["name"] == name


def test_unknown_model_names_the_registered_ones() -> None:
    with pytest.raises(UnknownNameError, match="unknown MIL model 'nope'.*abmil"):
        build_model("nope", in_dim=DIM, n_classes=2)
    with pytest.raises(UnknownNameError, match="Did you mean 'clam-sb'"):
        build_model("clam_sb", in_dim=DIM, n_classes=2)


def test_registering_a_name_twice_is_refused() -> None:
    from histoguard.mil import register_model

    with pytest.raises(ValueError, match="already registered"):
        register_model("abmil", description="", citation="")(type(_build("abmil")))


def test_invalid_bags_are_refused() -> None:
    model = _build("abmil")
    features, mask = _bags()
    with pytest.raises(ValueError, match="at least one real instance"):
        model(features, torch.zeros_like(mask))
    with pytest.raises(ValueError, match="mask must be a bool"):
        model(features, mask.float())
    with pytest.raises(ValueError, match="features must be"):
        model(features[:, :, :8], mask)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_shapes_and_attention(name: str) -> None:
    model = _build(name).eval()
    features, mask = _bags()
    output = model(features, mask)
    assert isinstance(output, MILOutput)
    assert output.logits.shape == (3, 2) and torch.isfinite(output.logits).all()
    if output.attention is not None:
        attention = output.attention
        assert attention.shape == mask.shape and attention.dtype == torch.float32
        assert (attention >= 0).all()
        assert torch.equal(attention[~mask], torch.zeros(int((~mask).sum())))
        torch.testing.assert_close(attention.sum(dim=1), torch.ones(3))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_padding_never_changes_outputs(name: str) -> None:
    model = _build(name).eval()
    features, mask = _bags()
    longer, longer_mask = _bags(extra=6, seed=1)
    longer[:, : features.shape[1]][mask] = features[mask]  # same real instances, new padding
    longer[0, SIZES[0] + 1] = float("nan")  # even NaN padding must not leak
    longer_mask[:, : mask.shape[1]] = mask
    with torch.no_grad():
        short_out, long_out = model(features, mask), model(longer, longer_mask)
    torch.testing.assert_close(long_out.logits, short_out.logits, atol=1e-5, rtol=0)
    if short_out.attention is not None:
        assert long_out.attention is not None
        torch.testing.assert_close(
            long_out.attention[:, : mask.shape[1]], short_out.attention, atol=1e-5, rtol=0
        )
        assert not long_out.attention[:, mask.shape[1] :].any()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_batched_bags_match_bags_alone(name: str) -> None:
    model = _build(name).eval()
    features, mask = _bags()
    with torch.no_grad():
        batched = model(features, mask)
        for b, size in enumerate(SIZES):
            alone = model(features[b : b + 1, :size], mask[b : b + 1, :size])
            torch.testing.assert_close(alone.logits[0], batched.logits[b], atol=1e-5, rtol=0)
            if alone.attention is not None and batched.attention is not None:
                torch.testing.assert_close(
                    alone.attention[0], batched.attention[b, :size], atol=1e-5, rtol=0
                )


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_loss_is_finite_and_reaches_every_parameter(name: str) -> None:
    model = _build(name).train()
    features, mask = _bags()
    labels = torch.tensor([0, 1, 1])
    output = model(features, mask)
    loss = model.compute_loss(output, labels, class_weights=torch.tensor([1.0, 2.0]))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None, f"no gradient reaches {param_name}"
        assert torch.isfinite(param.grad).all(), param_name


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_predict_gives_probabilities_in_eval_mode(name: str) -> None:
    model = _build(name).train()
    features, mask = _bags()
    probs, attention = model.predict(features, mask)
    assert not model.training and not probs.requires_grad
    assert probs.shape == (3, 2) and (probs >= 0).all()
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(3))
    assert attention is None or attention.shape == mask.shape


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_config_and_state_dict_rebuild_the_model_exactly(name: str) -> None:
    model = _build(name, n_classes=3).eval()
    config = json.loads(json.dumps(model.config()))
    assert config["name"] == VARIANTS.get(name, (name,))[0]
    assert config["in_dim"] == DIM and config["n_classes"] == 3
    torch.manual_seed(1)  # different random init, overwritten by the state dict
    clone = build_model(**config)
    clone.load_state_dict(model.state_dict())
    clone.eval()
    features, mask = _bags()
    with torch.no_grad():
        expected, actual = model(features, mask), clone(features, mask)
    assert torch.equal(actual.logits, expected.logits)
    assert (actual.attention is None) == (expected.attention is None)
    if expected.attention is not None and actual.attention is not None:
        assert torch.equal(actual.attention, expected.attention)


def test_clam_subtyping_adds_out_of_class_terms() -> None:
    torch.manual_seed(0)
    features, mask = _bags()
    labels = torch.tensor([0, 1, 2])
    plain = build_model("clam-sb", in_dim=DIM, n_classes=3, k_sample=2)
    subtyping = build_model("clam-sb", in_dim=DIM, n_classes=3, k_sample=2, subtyping=True)
    subtyping.load_state_dict(plain.state_dict())
    output = plain(features, mask)
    assert not torch.equal(
        plain.compute_loss(output, labels), subtyping.compute_loss(output, labels)
    )


# --- learning on synthetic bags ---------------------------------------------------------------


def _auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Rank-based ROC AUC (Mann-Whitney U / (n_pos * n_neg)), ties counted half."""
    ranks = rankdata(scores)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _synthetic_bags(n_bags: int, seed: int) -> tuple:
    """Half the bags hold 1-3 instances from a shifted Gaussian among 10-30 negatives."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(10, 31, size=n_bags)
    labels = np.arange(n_bags) % 2
    features = rng.normal(size=(n_bags, sizes.max(), DIM)).astype(np.float32)
    instance_labels = np.zeros((n_bags, sizes.max()), dtype=bool)
    for b in np.flatnonzero(labels):
        chosen = rng.choice(sizes[b], size=rng.integers(1, 4), replace=False)
        features[b, chosen, :8] += 2.0
        instance_labels[b, chosen] = True
    mask = np.arange(sizes.max())[None, :] < sizes[:, None]
    return (
        torch.from_numpy(features),
        torch.from_numpy(mask),
        torch.from_numpy(labels),
        instance_labels,
    )


@pytest.fixture(scope="module")
def synthetic() -> tuple:
    return _synthetic_bags(100, seed=0), _synthetic_bags(60, seed=1)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_models_learn_synthetic_bags(name: str, synthetic: tuple) -> None:
    (features, mask, labels, _), (test_x, test_mask, test_y, test_instances) = synthetic
    model = _build(name)
    optimiser = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    order = torch.Generator().manual_seed(0)
    for _ in range(8):
        model.train()
        for batch in torch.randperm(len(labels), generator=order).split(10):
            optimiser.zero_grad()
            loss = model.compute_loss(model(features[batch], mask[batch]), labels[batch])
            loss.backward()
            optimiser.step()
    probs, attention = model.predict(test_x, test_mask)
    assert _auc(probs[:, 1].numpy(), test_y.numpy() == 1) > 0.9
    if attention is not None:
        positive_bags = np.flatnonzero(test_y.numpy())
        aucs = [
            _auc(attention[b][test_mask[b]].numpy(), test_instances[b][test_mask[b].numpy()])
            for b in positive_bags
        ]
        assert np.mean(aucs) > 0.8


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_bag_embedding_has_its_shape_ignores_padding_and_feeds_the_head(name: str) -> None:
    model = _build(name, n_classes=3).eval()
    features, mask = _bags()
    longer, longer_mask = _bags(extra=6, seed=1)
    longer[:, : features.shape[1]][mask] = features[mask]
    longer[0, SIZES[0] + 1] = float("nan")
    longer_mask[:, : mask.shape[1]] = mask
    with torch.no_grad():
        short_out, long_out = model(features, mask), model(longer, longer_mask)
    assert short_out.embedding is not None and long_out.embedding is not None
    assert model.embedding_dim > 0
    assert short_out.embedding.shape == (3, model.embedding_dim)
    assert torch.isfinite(short_out.embedding).all()
    torch.testing.assert_close(long_out.embedding, short_out.embedding, atol=1e-5, rtol=0)
    # The embedding carries what the logits depend on: other bags, other embeddings.
    assert not torch.allclose(short_out.embedding[0], short_out.embedding[1])


def test_topk_embedding_reproduces_the_bag_logits() -> None:
    model = _build("topk", n_classes=3).eval()
    features, mask = _bags()
    with torch.no_grad():
        output = model(features, mask)
    assert output.embedding is not None
    last = model.instance_classifier[1]
    per_class = output.embedding.view(3, 3, -1)  # (B, C, H)
    logits = torch.einsum("bch,ch->bc", per_class, last.weight) + last.bias
    torch.testing.assert_close(logits, output.logits, atol=1e-5, rtol=0)


def test_class_weights_act_on_a_batch_of_one_bag() -> None:
    """``F.cross_entropy(weight=w)`` on one bag divides the weight back out; the loss must
    scale with the bag's class weight, and a batch's loss is the mean of its bags' terms."""
    from histoguard.mil._base import weighted_cross_entropy

    logits = torch.tensor([[0.3, -0.2], [1.0, 0.5], [-0.4, 0.9]])
    labels = torch.tensor([0, 1, 1])
    weights = torch.tensor([3.0, 0.5])
    plain = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    for i in range(3):
        one = weighted_cross_entropy(logits[i : i + 1], labels[i : i + 1], weights)
        assert float(one) == pytest.approx(float(weights[labels[i]] * plain[i]))
    batch = weighted_cross_entropy(logits, labels, weights)
    assert float(batch) == pytest.approx(float((weights[labels] * plain).mean()))
    assert float(weighted_cross_entropy(logits, labels)) == pytest.approx(float(plain.mean()))
