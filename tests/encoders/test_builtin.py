"""The built-in encoders: contract, D4 invariance on real tiles, real stain signal, training,
weights round trip."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from histoguard.encoders import list_encoders, load_encoder
from histoguard.encoders._cnn import CompactCNN
from histoguard.encoders._d4 import (
    D4_CAYLEY,
    D4InvariantCNN,
    d4_inverse,
    d4_transform,
)
from histoguard.encoders._handcrafted import (
    FEATURE_NAMES,
    _log_energies,
    _sobel_and_laplacian,
    percentiles,
)
from histoguard.errors import WeightsError

BUILTIN = ("hg-cnn", "hg-d4", "hg-handcrafted")
TRAINABLE = ("hg-cnn", "hg-d4")


def _random_tiles(n: int, size: int = 224, seed: int = 0) -> np.ndarray:
    """``(n, size, size, 3)`` uint8 noise tiles."""
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _centre_crop(image: np.ndarray, size: int | None = None) -> np.ndarray:
    """The largest centred square of ``(H, W, 3)``, or a centred ``size`` crop."""
    side = size or min(image.shape[:2])
    y = (image.shape[0] - side) // 2
    x = (image.shape[1] - side) // 2
    return image[y : y + side, x : x + side]


def _rgb(path: Path) -> np.ndarray:
    """``(H, W, 3)`` uint8, writable (torch warns on read-only arrays)."""
    return np.array(Image.open(path).convert("RGB"))


def _real_tiles(data: Path) -> np.ndarray:
    """8 real 224 px tiles: 2 per LC25000 lung class and 2 centre crops of GlaS colon images."""
    lung = data / "tiles" / "lc25000_lung"
    with (lung / "labels.csv").open(newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda row: row["path"])
    tiles = []
    for label in ("lung_aca", "lung_n", "lung_scc"):
        paths = [row["path"] for row in rows if row["label"] == label][:2]
        tiles += [_rgb(lung / p) for p in paths]
    glas = data / "tiles" / "glas"
    with (glas / "labels.csv").open(newline="") as f:
        glas_paths = sorted(row["path"] for row in csv.DictReader(f))[:2]
    tiles += [_centre_crop(_rgb(glas / p), 224) for p in glas_paths]
    batch = np.stack(tiles)
    assert batch.shape == (8, 224, 224, 3)
    return batch


def _dihedral(tiles: np.ndarray, k: int, flip: bool) -> np.ndarray:
    """Rotate ``(B, H, W, 3)`` tiles by ``k`` x 90°, after mirroring left-right if ``flip``."""
    out = tiles[:, :, ::-1] if flip else tiles
    return np.ascontiguousarray(np.rot90(out, k, axes=(1, 2)))


def _max_relative_change(encode: Callable[[np.ndarray], np.ndarray], tiles: np.ndarray) -> float:
    """Largest ``||e_g - e|| / ||e||`` over the 8 dihedral transforms and the tiles."""
    transformed = [_dihedral(tiles, k, flip) for flip in (False, True) for k in range(4)]
    embeddings = encode(np.concatenate(transformed)).reshape(8, len(tiles), -1)
    reference = embeddings[0]
    change = np.linalg.norm(embeddings - reference, axis=2) / np.linalg.norm(reference, axis=1)
    return float(change.max())


# --- the contract, for every built-in encoder --------------------------------------------


@pytest.mark.parametrize("name", BUILTIN)
def test_encode_contract(name: str) -> None:
    """(4, 224, 224, 3) uint8 -> (4, D) float32, finite, repeatable; metadata matches."""
    encoder = load_encoder(name)
    info = {entry.name: entry for entry in list_encoders()}[name]
    assert info.input_size == 224
    tiles = _random_tiles(4)
    first = encoder.encode(tiles)
    second = encoder.encode(tiles)
    assert first.shape == (4, info.embed_dim)
    assert first.dtype == np.float32
    assert np.isfinite(first).all()
    np.testing.assert_array_equal(first, second)
    # The module itself (not only Encoder's shape check) produces the declared dimension.
    with torch.inference_mode():
        raw = encoder.module(torch.zeros(1, 3, info.input_size, info.input_size))
    assert tuple(raw.shape) == (1, info.embed_dim)
    assert info.to_dict()["embed_dim"] == info.embed_dim


@pytest.mark.parametrize("name", TRAINABLE)
def test_untrained_weights_are_seeded(name: str) -> None:
    """Two untrained builds embed alike, and building leaves the global RNG alone."""
    torch.manual_seed(123)
    expected_draw = torch.rand(1)
    torch.manual_seed(123)
    tiles = _random_tiles(2, seed=1)
    a = load_encoder(name).encode(tiles)
    b = load_encoder(name).encode(tiles)
    np.testing.assert_array_equal(a, b)
    assert torch.equal(torch.rand(1), expected_draw)


# --- hg-d4: the group and the invariance -------------------------------------------------


def test_d4_cayley_table_matches_the_transforms() -> None:
    x = torch.arange(2 * 5 * 5, dtype=torch.float32).reshape(2, 5, 5)
    for g in range(8):
        assert torch.equal(d4_transform(d4_transform(x, g), d4_inverse(g)), x)
        for h in range(8):
            assert torch.equal(
                d4_transform(d4_transform(x, h), g), d4_transform(x, D4_CAYLEY[g][h])
            )
    # The 8 transforms are distinct.
    assert len({d4_transform(x, g).numpy().tobytes() for g in range(8)}) == 8


def test_d4_feature_maps_are_equivariant() -> None:
    """features(T_u x)[:, :, g] == T_u features(x)[:, :, u⁻¹g]: the law the readout relies on."""
    torch.manual_seed(0)
    model = D4InvariantCNN(embed_dim=16, widths=(4, 8)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        base = model.features(x)
        for u in range(8):
            moved = model.features(d4_transform(x, u))
            perm = [D4_CAYLEY[d4_inverse(u)][g] for g in range(8)]
            torch.testing.assert_close(moved, d4_transform(base[:, :, perm], u), rtol=0, atol=1e-5)


def test_d4_rejects_sizes_that_would_break_the_symmetry() -> None:
    model = D4InvariantCNN()
    with pytest.raises(ValueError, match="divisible by 32"):
        model(torch.zeros(1, 3, 100, 100))


def test_d4_invariant_and_cnn_not_on_real_tiles(shared_data: Path) -> None:
    """All 8 rotations/flips of real tiles give the same hg-d4 embedding (random weights);
    the plain hg-cnn's embedding moves, so the comparison can fail."""
    tiles = _real_tiles(shared_data)
    d4_change = _max_relative_change(load_encoder("hg-d4").encode, tiles)
    cnn_change = _max_relative_change(load_encoder("hg-cnn").encode, tiles)
    # The hand-crafted features are invariant by construction too (see its module docstring).
    handcrafted_change = _max_relative_change(load_encoder("hg-handcrafted").encode, tiles)
    assert d4_change <= 1e-4, d4_change
    assert handcrafted_change <= 1e-4, handcrafted_change
    assert cnn_change > 1e-2, cnn_change


# --- hg-handcrafted -------------------------------------------------------------------------


def test_percentiles_match_numpy() -> None:
    x = torch.from_numpy(np.random.default_rng(2).random((3, 2, 101)))
    expected = np.moveaxis(np.percentile(x.numpy(), [10, 50, 90], axis=-1), 0, -1)
    np.testing.assert_allclose(percentiles(x, (10.0, 50.0, 90.0)).numpy(), expected, rtol=1e-12)


def test_handcrafted_filters_match_scipy() -> None:
    """Sobel, Laplacian and the Fourier-domain LoG energies agree with scipy.ndimage."""
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(4)
    image = ndimage.gaussian_filter(rng.random((96, 96)), 1.5)
    tensor = torch.from_numpy(image)[None, None]
    magnitude, laplacian = _sobel_and_laplacian(tensor)
    gx = ndimage.sobel(image, axis=1, mode="mirror") / 8
    gy = ndimage.sobel(image, axis=0, mode="mirror") / 8
    np.testing.assert_allclose(magnitude[0, 0].numpy(), np.hypot(gx, gy), atol=1e-12)
    np.testing.assert_allclose(laplacian[0, 0].numpy(), ndimage.laplace(image, mode="mirror"))
    sigmas = (1.0, 2.0, 4.0)
    expected = [
        np.mean((s**2 * ndimage.gaussian_laplace(image, s, mode="reflect")) ** 2) for s in sigmas
    ]
    np.testing.assert_allclose(_log_energies(tensor, sigmas)[0, 0].numpy(), expected, rtol=0.02)


def test_handcrafted_features_separate_real_tissue(shared_data: Path) -> None:
    """Haematoxylin tracks nuclei, eosin tracks stroma, background tracks bare glass."""
    fixtures = shared_data / "qc_fixtures" / "tiles"
    names = (
        "high-nuclei-score-level0.png",  # dense tumour nuclei
        "low-nuclei-score-level0.png",  # fat: few nuclei, mostly empty
        "medium-nuclei-score-level0.png",  # pink collagenous stroma
        "almost-white-1.png",  # glass
    )
    # Largest centred square; Encoder.preprocess resizes it to 224 px.
    tiles = [_centre_crop(_rgb(fixtures / name)) for name in names]
    encoder = load_encoder("hg-handcrafted")
    features = np.concatenate([encoder.encode(tile[None]) for tile in tiles])
    column = {name: features[:, i] for i, name in enumerate(FEATURE_NAMES)}
    high, low, stroma, glass = range(4)
    assert features.shape == (4, len(FEATURE_NAMES))
    assert column["h_mean"][high] > 2 * column["h_mean"][low]
    assert column["h_mean"][high] > 2 * column["h_mean"][stroma]
    # Nuclei-rich tissue is haematoxylin-dominated, stroma eosin-dominated.
    assert column["h_mean"][high] > column["e_mean"][high]
    assert column["e_mean"][stroma] > column["h_mean"][stroma]
    assert column["background_fraction"][glass] > 0.95
    assert column["background_fraction"][high] < 0.2
    assert column["grey_grad_mean"][high] > 10 * column["grey_grad_mean"][glass]


def test_handcrafted_refuses_weights(tmp_path: Path) -> None:
    path = tmp_path / "some.safetensors"
    path.write_bytes(b"not used")
    with pytest.raises(WeightsError, match="some.safetensors"):
        load_encoder("hg-handcrafted", weights=path)


# --- training and weights -------------------------------------------------------------------


@pytest.mark.parametrize("name", TRAINABLE)
def test_a_few_sgd_steps_reduce_the_loss(name: str) -> None:
    """Gradients reach every parameter and plain SGD fits a tiny batch."""
    torch.manual_seed(0)
    encoder = load_encoder(name)
    backbone = encoder.module.train()
    head = torch.nn.Linear(encoder.embed_dim, 2)
    model = torch.nn.Sequential(backbone, head)
    x = torch.randn(8, 3, 64, 64)
    y = torch.tensor([0, 1] * 4)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for step in range(6):
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        if step == 0:
            for param_name, param in backbone.named_parameters():
                assert param.grad is not None, param_name
                assert torch.isfinite(param.grad).all(), param_name
                assert param.grad.abs().sum() > 0, param_name
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_cnn_weights_round_trip(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(7)
    trained = CompactCNN(embed_dim=256)
    # Move batch-norm statistics away from their defaults so they must be loaded too.
    trained.train()(torch.randn(4, 3, 64, 64))
    path = tmp_path / "hg-cnn.safetensors"
    save_file(trained.state_dict(), str(path))

    encoder = load_encoder("hg-cnn", weights=path)
    tiles = _random_tiles(2, seed=3)
    with torch.inference_mode():
        expected = trained.eval()(encoder.preprocess(tiles)).numpy()
    np.testing.assert_array_equal(encoder.encode(tiles), expected)
    untrained = load_encoder("hg-cnn").encode(tiles)
    assert not np.allclose(untrained, expected)


def test_mismatched_weights_raise_weights_error(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "narrow.safetensors"
    save_file(CompactCNN(embed_dim=64, widths=(8, 16)).state_dict(), str(path))
    with pytest.raises(WeightsError, match="narrow.safetensors"):
        load_encoder("hg-cnn", weights=path)
    with pytest.raises(WeightsError, match="narrow.safetensors"):
        load_encoder("hg-d4", weights=path)
