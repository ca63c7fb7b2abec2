"""A conformance kit: check that your own encoder or MIL model keeps histoguard's contracts.

Run it in your test suite on anything you register, before you extract features with it or
train it::

    from histoguard.testing import check_encoder, check_mil_model

    check_encoder("my-encoder", weights="my-encoder.safetensors")
    check_mil_model(MyMIL)  # a registered MILModel subclass, an instance or a registry name

Each check builds tiny random inputs (seeded, so a failure reproduces), runs the contract's
properties one after the other, and raises :class:`ConformanceError` (an ``AssertionError``, so
pytest reports it as a failed test) naming the first property that does not hold.

The encoder contract (:class:`histoguard.encoders.Encoder`): ``encode((B, H, W, 3) uint8) ->
(B, D) float32`` with ``D == info.embed_dim``, finite, deterministic in evaluation mode,
independent of the batch a tile is in, and accepting tiles of another size than
``info.input_size`` (they are resized to it).

The MIL contract (:class:`histoguard.mil.MILModel`): ``forward(X (B, N, D), mask (B, N)) ->
MILOutput`` with logits ``(B, C)`` and, when present, attention ``(B, N)`` summing to 1 over the
real instances and 0 on padding; padding never changes the output; ``predict`` gives
probabilities; ``compute_loss`` is finite and reaches every parameter; ``config()`` rebuilds the
same model; the output does not depend on instance order unless the class sets
``permutation_invariant = False`` (e.g. models with positional encodings).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from histoguard.errors import ConformanceError

if TYPE_CHECKING:
    import torch

    from histoguard.encoders import Encoder
    from histoguard.mil import MILModel

__all__ = ["ConformanceError", "check_encoder", "check_mil_model"]


def _require(ok: bool, subject: str, prop: str, detail: str) -> None:
    if not ok:
        raise ConformanceError(subject, prop, detail)


# --- encoders ------------------------------------------------------------------------------------


def check_encoder(
    encoder_or_name: Encoder | str,
    *,
    weights: str | Path | None = None,
    n_tiles: int = 4,
    seed: int = 0,
    atol: float = 1e-4,
) -> Encoder:
    """Check the encoder contract on ``n_tiles`` random uint8 tiles.

    Properties, in order: output is a ``(n_tiles, D)`` float32 array with ``D ==
    info.embed_dim``; finite; the module is in evaluation mode and two calls give the same
    embeddings; encoding the tiles one by one gives the batched embeddings; tiles larger and
    smaller than ``info.input_size`` are accepted and give ``(n_tiles, D)`` finite embeddings.

    Args:
        encoder_or_name: a loaded :class:`~histoguard.encoders.Encoder`, or a registry name
            loaded with :func:`~histoguard.encoders.load_encoder`.
        weights: weights file or directory for a registry name (ignored for a loaded encoder).
        n_tiles: tiles per batch (at least 2, so batch independence means something).
        seed: seeds the random tiles.
        atol: absolute tolerance, relative to the embeddings' largest magnitude, for the
            determinism and batch-independence comparisons.

    Returns:
        The encoder checked (loaded when a name was given).

    Raises:
        ConformanceError: a property does not hold; the message names it.
        ValueError: ``n_tiles < 2``.
        EncoderError: a name that cannot be loaded (unknown, or weights missing).
    """
    from histoguard.encoders import Encoder, load_encoder

    if n_tiles < 2:
        raise ValueError(f"n_tiles must be at least 2, got {n_tiles}")
    encoder = (
        encoder_or_name
        if isinstance(encoder_or_name, Encoder)
        else load_encoder(encoder_or_name, weights=weights)
    )
    name, size = f"encoder {encoder.info.name!r}", encoder.info.input_size
    rng = np.random.default_rng(seed)
    tiles = rng.integers(0, 256, size=(n_tiles, size, size, 3), dtype=np.uint8)

    first = _encode(encoder, tiles, name, "output shape")
    expected = (n_tiles, encoder.info.embed_dim)
    _require(
        isinstance(first, np.ndarray) and first.dtype == np.float32,
        name,
        "output dtype",
        f"expected a float32 numpy array, got {type(first).__name__} {getattr(first, 'dtype', '')}",
    )
    _require(
        first.shape == expected,
        name,
        "output shape",
        f"expected (B, embed_dim) = {expected}, got {first.shape}",
    )
    _require(bool(np.isfinite(first).all()), name, "finite output", "NaN or inf in embeddings")
    _require(
        not encoder.module.training,
        name,
        "evaluation mode",
        "the module is in training mode (dropout, batch statistics)",
    )
    scale = max(float(np.abs(first).max()), 1.0)
    second = _encode(encoder, tiles, name, "determinism")
    _require(
        np.allclose(first, second, rtol=0, atol=atol * scale),
        name,
        "determinism",
        f"two calls on the same tiles differ by up to {np.abs(first - second).max():.3g}",
    )
    one_by_one = np.concatenate([_encode(encoder, t[None], name, "batch independence")
                                 for t in tiles])  # fmt: skip
    _require(
        np.allclose(first, one_by_one, rtol=0, atol=atol * scale),
        name,
        "batch independence",
        "a tile's embedding depends on the other tiles in its batch (max difference "
        f"{np.abs(first - one_by_one).max():.3g}); batch statistics in evaluation mode?",
    )
    for other in (size + 32, max(size // 2 + 3, 8)):
        resized = rng.integers(0, 256, size=(n_tiles, other, other, 3), dtype=np.uint8)
        out = _encode(encoder, resized, name, f"tiles of {other} px")
        _require(
            out.shape == expected and bool(np.isfinite(out).all()),
            name,
            f"tiles of {other} px",
            f"expected finite {expected} embeddings, got {out.shape}",
        )
    return encoder


def _encode(encoder: Encoder, tiles: np.ndarray, name: str, prop: str) -> np.ndarray:
    try:
        return encoder.encode(tiles)
    except Exception as error:  # any failure of the user's module is a broken contract
        raise ConformanceError(
            name, prop, f"encode raised {type(error).__name__}: {error}"
        ) from error


# --- MIL models ----------------------------------------------------------------------------------


def check_mil_model(
    model_or_cls: MILModel | type[MILModel] | str,
    *,
    in_dim: int = 8,
    n_classes: int = 2,
    seed: int = 0,
    permutation_invariant: bool | None = None,
    atol: float = 1e-5,
) -> MILModel:
    """Check the MIL contract on a padded batch of three random bags (7, 5 and 3 instances).

    Properties, in order: logits ``(B, C)`` finite; attention, when present, ``(B, N)``,
    non-negative, summing to 1 over the real instances and 0 on padding; padding features
    (even NaN) do not change logits or attention, and a bag scored alone gives the same output
    as in the padded batch; ``predict`` returns probabilities ``(B, C)`` summing to 1 and leaves
    the model in evaluation mode; ``compute_loss`` is a finite scalar whose gradient reaches
    every trainable parameter; instance order does not matter (unless not claimed);
    ``build_model(**model.config())`` rebuilds a model with the same parameters that, given
    the same weights, gives the same logits.

    Args:
        model_or_cls: a model instance (its ``in_dim`` and ``n_classes`` are used), a
            :class:`~histoguard.mil.MILModel` subclass or a registry name (built with
            ``in_dim`` and ``n_classes``).
        in_dim: instance feature length D for a class or a name.
        n_classes: number of classes C for a class or a name.
        seed: seeds torch and the random bags.
        permutation_invariant: whether to check invariance to instance order; None reads the
            model class's ``permutation_invariant`` attribute (True when absent).
        atol: absolute tolerance of the output comparisons.

    Returns:
        The model checked, in evaluation mode.

    Raises:
        ConformanceError: a property does not hold; the message names it.
    """
    import torch

    from histoguard.mil import MILModel, build_model

    torch.manual_seed(seed)
    if isinstance(model_or_cls, str):
        model = build_model(model_or_cls, in_dim=in_dim, n_classes=n_classes)
    elif isinstance(model_or_cls, MILModel):
        model = model_or_cls
    else:
        model = model_or_cls(in_dim=in_dim, n_classes=n_classes)
    name = f"MIL model {type(model).registry_name or type(model).__name__!r}"
    d, c = model.in_dim, model.n_classes
    generator = torch.Generator().manual_seed(seed)
    lengths = (7, 5, 3)
    n = max(lengths)
    features = torch.randn(len(lengths), n, d, generator=generator)
    mask = torch.arange(n)[None, :] < torch.tensor(lengths)[:, None]
    labels = torch.arange(len(lengths)) % c

    model.eval()
    logits, attention = _forward(model, features, mask, name, "forward")
    _check_outputs(logits, attention, mask, c, name)

    noisy = features.clone()
    noisy[~mask] = float("nan")
    noisy_logits, noisy_attention = _forward(model, noisy, mask, name, "mask respected")
    _require(
        _close(logits, noisy_logits, atol) and _close(attention, noisy_attention, atol),
        name,
        "mask respected",
        "changing the padded instances changes the output",
    )
    for i, length in enumerate(lengths):
        alone, alone_attention = _forward(
            model, features[i : i + 1, :length], mask[i : i + 1, :length], name, "mask respected"
        )
        _require(
            _close(alone[0], logits[i], atol)
            and (
                attention is None
                or (
                    alone_attention is not None
                    and _close(alone_attention[0], attention[i, :length], atol)
                )
            ),
            name,
            "mask respected",
            f"bag {i} scored alone differs from the same bag in a padded batch",
        )

    _check_predict(model, features, mask, logits, name, atol)
    _check_gradients(model, features, mask, labels, name)

    invariant = (
        getattr(type(model), "permutation_invariant", True)
        if permutation_invariant is None
        else permutation_invariant
    )
    if invariant:
        _check_permutation(model, features, mask, lengths, logits, attention, name, atol, generator)
    _check_config(model, features, mask, logits, name, atol)
    return model


def _forward(
    model: MILModel, features: torch.Tensor, mask: torch.Tensor, name: str, prop: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    import torch

    try:
        with torch.no_grad():
            output = model(features, mask)
    except Exception as error:  # any failure of the user's module is a broken contract
        raise ConformanceError(
            name, prop, f"forward raised {type(error).__name__}: {error}"
        ) from error
    return output.logits, output.attention


def _close(a: torch.Tensor | None, b: torch.Tensor | None, atol: float) -> bool:
    import torch

    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=1e-4, atol=atol))


def _check_outputs(
    logits: torch.Tensor, attention: torch.Tensor | None, mask: torch.Tensor, c: int, name: str
) -> None:
    import torch

    b, n = mask.shape
    _require(
        tuple(logits.shape) == (b, c),
        name,
        "logits shape",
        f"expected (B, C) = {(b, c)}, got {tuple(logits.shape)}",
    )
    _require(bool(torch.isfinite(logits).all()), name, "finite logits", "NaN or inf")
    if attention is None:
        return
    _require(
        tuple(attention.shape) == (b, n),
        name,
        "attention shape",
        f"expected (B, N) = {(b, n)}, got {tuple(attention.shape)}",
    )
    _require(
        bool(torch.isfinite(attention).all()) and bool((attention >= 0).all()),
        name,
        "attention values",
        "attention must be finite and non-negative",
    )
    _require(
        bool((attention[~mask].abs() <= 1e-6).all()),
        name,
        "attention on padding",
        "padding gets non-zero attention, expected exactly 0",
    )
    sums = (attention * mask).sum(dim=1)
    _require(
        bool(torch.allclose(sums, torch.ones_like(sums), atol=1e-4)),
        name,
        "attention sums to 1",
        f"attention over the real instances sums to {sums.tolist()}",
    )


def _check_predict(
    model: MILModel,
    features: torch.Tensor,
    mask: torch.Tensor,
    logits: torch.Tensor,
    name: str,
    atol: float,
) -> None:
    import torch

    model.train()
    try:
        probs, _ = model.predict(features, mask)
    except Exception as error:
        raise ConformanceError(
            name, "predict", f"raised {type(error).__name__}: {error}"
        ) from error
    _require(not model.training, name, "predict", "left the model in training mode")
    _require(
        tuple(probs.shape) == tuple(logits.shape)
        and bool(torch.allclose(probs.sum(dim=1), torch.ones(len(probs)), atol=1e-5))
        and bool(((probs >= 0) & (probs <= 1)).all()),
        name,
        "predict",
        "expected (B, C) class probabilities summing to 1",
    )
    _require(
        bool(torch.allclose(probs, torch.softmax(logits, dim=1), atol=atol)),
        name,
        "predict",
        "probabilities differ from the softmax of the forward logits",
    )


def _check_gradients(
    model: MILModel, features: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, name: str
) -> None:
    import torch

    model.train()
    model.zero_grad(set_to_none=True)
    try:
        loss = model.compute_loss(model(features, mask), labels)
        _require(
            loss.ndim == 0 and bool(torch.isfinite(loss)),
            name,
            "compute_loss",
            f"expected a finite scalar, got {loss.detach()}",
        )
        loss.backward()
    except ConformanceError:
        raise
    except Exception as error:
        raise ConformanceError(
            name, "compute_loss", f"raised {type(error).__name__}: {error}"
        ) from error
    finally:
        model.eval()
    missing = [
        p_name
        for p_name, p in model.named_parameters()
        if p.requires_grad and (p.grad is None or not bool(torch.isfinite(p.grad).all()))
    ]
    _require(
        not missing,
        name,
        "gradients reach every parameter",
        f"no finite gradient for {', '.join(missing)}",
    )
    model.zero_grad(set_to_none=True)


def _check_permutation(
    model: MILModel,
    features: torch.Tensor,
    mask: torch.Tensor,
    lengths: tuple[int, ...],
    logits: torch.Tensor,
    attention: torch.Tensor | None,
    name: str,
    atol: float,
    generator: torch.Generator,
) -> None:
    import torch

    order = torch.arange(features.shape[1]).repeat(len(lengths), 1)
    for i, length in enumerate(lengths):
        order[i, :length] = torch.randperm(length, generator=generator)
    shuffled = torch.gather(features, 1, order[:, :, None].expand_as(features))
    new_logits, new_attention = _forward(model, shuffled, mask, name, "permutation invariance")
    expected_attention = None if attention is None else torch.gather(attention, 1, order)
    _require(
        _close(logits, new_logits, atol) and _close(expected_attention, new_attention, atol),
        name,
        "permutation invariance",
        "reordering a bag's instances changes its output; if the model is meant to "
        "depend on order, set permutation_invariant = False on its class",
    )


def _check_config(
    model: MILModel,
    features: torch.Tensor,
    mask: torch.Tensor,
    logits: torch.Tensor,
    name: str,
    atol: float,
) -> None:
    from histoguard.mil import build_model

    try:
        rebuilt = build_model(**model.config())
        rebuilt.load_state_dict(model.state_dict(), strict=True)
    except Exception as error:
        raise ConformanceError(
            name,
            "config rebuilds the model",
            f"{type(error).__name__}: {error}; register the class with @register_model and pass "
            "every constructor argument on to MILModel.__init__",
        ) from error
    _require(
        type(rebuilt) is type(model),
        name,
        "config rebuilds the model",
        f"build_model(**config()) made a {type(rebuilt).__name__}",
    )
    rebuilt_logits, _ = _forward(rebuilt.eval(), features, mask, name, "config rebuilds the model")
    _require(
        _close(logits, rebuilt_logits, atol),
        name,
        "config rebuilds the model",
        "the rebuilt model with the same weights gives other logits",
    )
