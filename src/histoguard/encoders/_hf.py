"""Hugging Face ``transformers`` vision models from a local saved-model directory.

Nothing is downloaded: ``weights`` is a directory written by ``save_pretrained`` (config.json
plus model.safetensors). The embedding is the CLS token of ``last_hidden_state``, as the model
cards of Phikon and Phikon-v2 prescribe; the pooler, where a model has one, is not used.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import torch

from histoguard.core._weights import PICKLE_SUFFIXES, check_safetensors
from histoguard.encoders._export import as_positive_int, as_triple
from histoguard.encoders._registry import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Encoder,
    EncoderFactory,
    EncoderInfo,
    get_encoder_info,
    register_encoder,
)
from histoguard.errors import EncoderError, UnsafeWeightsError, WeightsError

#: Input side used when neither the processor nor the model config states one.
DEFAULT_INPUT_SIZE = 224

#: Layers a config may declare when the weights' names carry no layer numbers.
_MAX_LAYERS_UNNAMED = 256
#: Parameters a config may describe beyond those its weights hold, before any allocation.
_SPARE_PARAMETERS = 16 * 1024 * 1024
#: A numbered layer in a parameter name: ``encoder.layer.11.attention...``, ``layers.3.mlp...``.
_LAYER_INDEX = re.compile(r"(?:^|\.)layers?\.(\d+)\.")

#: Parameters a checkpoint may lack without harm: the CLS embedding never goes through them.
_UNUSED_PREFIXES = ("pooler.",)


class HFClsEncoder(torch.nn.Module):
    """``(B, 3, S, S)`` normalised tiles -> ``(B, hidden_size)`` CLS token of the last layer.

    Args:
        model: a ``transformers`` vision backbone whose output has ``last_hidden_state``
            ``(B, tokens, hidden_size)`` with the CLS token first.
        info: the metadata this module was loaded with (exposed as ``encoder_info``).
    """

    def __init__(self, model: torch.nn.Module, info: EncoderInfo) -> None:
        super().__init__()
        self.model = model
        self.encoder_info = info

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden: torch.Tensor = self.model(pixel_values=pixel_values).last_hidden_state
        return hidden[:, 0]


def hf_info(directory: Path) -> EncoderInfo:
    """The concrete ``hf-auto`` metadata of a saved-model directory.

    ``embed_dim`` is config.json's ``hidden_size``. ``input_size`` is what the image processor
    feeds the model (preprocessor_config.json: the centre-crop size when it crops, else its
    resize size), falling back to config.json's ``image_size``, then 224; the processor wins
    because DINOv2-style configs state the position-embedding grid (518) rather than the tile
    size the model was trained and evaluated on (224). ``mean``/``std`` are the processor's
    ``image_mean``/``image_std``, ImageNet statistics when absent.

    Raises:
        WeightsError: not a saved-model directory, or config.json lacks a usable hidden_size.
    """
    directory = Path(directory)
    config = _read_json(directory / "config.json", required=True)
    processor = _read_json(directory / "preprocessor_config.json", required=False)
    try:
        hidden = as_positive_int(config.get("hidden_size"))
    except ValueError as exc:
        raise WeightsError(f"{directory / 'config.json'}: hidden_size: {exc}") from exc
    base = get_encoder_info("hf-auto")
    return EncoderInfo(
        name=base.name,
        embed_dim=hidden,
        input_size=_input_size(directory, config, processor),
        mean=_triple(directory, processor, "image_mean", IMAGENET_MEAN),
        std=_triple(directory, processor, "image_std", IMAGENET_STD),
        licence=base.licence,
        needs_weights=True,
        description=f"transformers {config.get('model_type', 'model')} from {directory}",
        factory=base.factory,
    )


def load_hf_encoder(
    directory: str | Path, *, allow_pickle: bool = False, device: str = "cpu"
) -> Encoder:
    """Load a saved-model directory as an :class:`Encoder` with metadata from its files.

    Args:
        directory: written by ``save_pretrained``; safetensors weights unless ``allow_pickle``.
        allow_pickle: accept a directory holding only ``pytorch_model.bin`` (loaded by
            ``transformers`` with ``weights_only=True``).
        device: torch device string for the module.

    Raises:
        WeightsError: not a saved-model directory, corrupt or incomplete weights.
        UnsafeWeightsError: only pickled weights and no ``allow_pickle``.
        EncoderError: ``transformers`` is not installed or cannot build the model.
    """
    directory = Path(directory)
    info = hf_info(directory)
    return Encoder(info, load_hf_module(directory, info, allow_pickle=allow_pickle), device)


def load_hf_module(directory: Path, info: EncoderInfo, *, allow_pickle: bool) -> HFClsEncoder:
    """Build the CLS-token module of a saved-model directory and check its width.

    Raises:
        WeightsError: not a saved-model directory, weights missing, corrupt or not fitting
            the config, or a hidden size other than ``info.embed_dim``.
        UnsafeWeightsError: only pickled weights and no ``allow_pickle``.
        EncoderError: ``transformers`` is not installed or cannot build the model.
    """
    directory = Path(directory)
    shapes = _check_weight_files(directory, allow_pickle=allow_pickle)
    use_safetensors = shapes is not None
    try:
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging
    except ImportError as exc:
        raise EncoderError(
            f"encoder {info.name!r} needs transformers: pip install histoguard[transformers]"
        ) from exc
    if shapes is not None:
        _check_config_size(directory, shapes)
    verbosity = hf_logging.get_verbosity()
    # transformers prints its own loading report; _check_loading below judges it instead.
    hf_logging.set_verbosity_error()
    try:
        model, loading = AutoModel.from_pretrained(
            str(directory),
            local_files_only=True,  # never reach the hub
            trust_remote_code=False,  # a directory's custom modelling code would run as Python
            use_safetensors=use_safetensors,
            weights_only=True,  # applies when allow_pickle lets a pytorch_model.bin through
            dtype=torch.float32,  # tiles arrive as float32; a bf16 checkpoint is upcast
            output_loading_info=True,
        )
    except Exception as exc:  # OSError, ValueError, UnpicklingError...: all "cannot load"
        raise WeightsError(f"{directory}: transformers cannot load this model ({exc})") from exc
    finally:
        hf_logging.set_verbosity(verbosity)
    _check_loading(directory, loading)
    hidden = getattr(model.config, "hidden_size", None)
    if hidden != info.embed_dim:
        raise WeightsError(
            f"{directory}: model has hidden size {hidden}, but {info.name!r} produces "
            f"{info.embed_dim}-dimensional embeddings; is this the right directory?"
        )
    return HFClsEncoder(model.eval(), info)


def _check_weight_files(
    directory: Path, *, allow_pickle: bool
) -> dict[str, tuple[int, ...]] | None:
    # Decide the weight format before transformers does, so a pickle-only directory is refused
    # with histoguard's message and every safetensors header is validated first. Returns the
    # tensor shapes of all safetensors files, or None for pickled weights.
    if not (directory / "config.json").is_file():
        raise WeightsError(
            f"{directory}: not a saved-model directory (expected config.json and "
            "model.safetensors, as written by save_pretrained)"
        )
    safetensors = sorted(directory.glob("*.safetensors"))
    shapes: dict[str, tuple[int, ...]] = {}
    for file in safetensors:
        shapes.update(check_safetensors(file))
    if safetensors:
        return shapes
    pickles = sorted(p for p in directory.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if not pickles:
        raise WeightsError(f"{directory}: no weights file (expected model.safetensors)")
    if not allow_pickle:
        raise UnsafeWeightsError(
            f"{pickles[0]}: this directory holds only pickled weights, and loading a pickle can "
            "run arbitrary code. Re-save the model with save_pretrained(safe_serialization=True) "
            "or, if you trust its source, pass --allow-pickle (Python: allow_pickle=True)"
        )
    return None


def _check_config_size(directory: Path, shapes: dict[str, tuple[int, ...]]) -> None:
    """Refuse a config.json that describes a larger network than its weights hold, before
    transformers builds (and allocates) it.

    The layer count is checked against the numbered layers in the weights' names (building a
    million layers takes hours even without memory); the model is then built on PyTorch's
    ``meta`` device, which records shapes only, and its parameter count compared with the
    weights'. Up to :data:`_SPARE_PARAMETERS` (a pooler, a resized position embedding) may lack
    weights; anything missing is then caught exactly by ``_check_loading``.

    Raises:
        WeightsError: naming the config value or the parameter counts.
    """
    from transformers import AutoConfig, AutoModel

    config_path = directory / "config.json"
    layers = _read_json(config_path, required=True).get("num_hidden_layers")
    stored = [int(m.group(1)) + 1 for key in shapes if (m := _LAYER_INDEX.search(key))]
    limit = max(stored, default=_MAX_LAYERS_UNNAMED)
    if isinstance(layers, int) and not 0 <= layers <= limit:
        raise WeightsError(
            f"{config_path}: num_hidden_layers = {layers}, but the weights hold {limit} layers; "
            "use the config.json saved with these weights"
        )
    try:
        config = AutoConfig.from_pretrained(
            str(directory), local_files_only=True, trust_remote_code=False
        )
        with torch.device("meta"):
            probe = AutoModel.from_config(config)
    except Exception as exc:  # ValueError, KeyError, TypeError...: all "config does not build"
        raise WeightsError(f"{config_path}: transformers cannot build this config ({exc})") from exc
    described = sum(p.numel() for p in probe.parameters())
    held = sum(math.prod(shape) for shape in shapes.values())
    if described > held + _SPARE_PARAMETERS:
        raise WeightsError(
            f"{config_path}: describes a network of {described:,} parameters but the weights hold "
            f"{held:,}; use the config.json saved with these weights"
        )


def _check_loading(directory: Path, loading: dict[str, Any]) -> None:
    # transformers fills absent parameters with random values and only logs it; a backbone
    # with random layers would give plausible-looking but meaningless embeddings.
    missing = sorted(
        key for key in loading.get("missing_keys", ()) if not key.startswith(_UNUSED_PREFIXES)
    )
    mismatched = sorted(str(k) for k in loading.get("mismatched_keys", ()))
    if missing or mismatched:
        detail = ", ".join((missing + mismatched)[:5])
        raise WeightsError(
            f"{directory}: the weights do not fit the config ({len(missing)} missing, "
            f"{len(mismatched)} mis-shaped parameters: {detail})"
        )


def _read_json(path: Path, *, required: bool) -> dict[str, Any]:
    if not path.is_file():
        if required:
            raise WeightsError(
                f"{path.parent}: not a saved-model directory (no config.json; save the model "
                "with save_pretrained and pass the directory)"
            )
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise WeightsError(f"{path}: cannot read JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise WeightsError(f"{path}: expected a JSON object")
    return data


def _input_size(directory: Path, config: dict[str, Any], processor: dict[str, Any]) -> int:
    candidates = []
    if processor.get("do_center_crop", True):
        candidates.append(processor.get("crop_size"))
    candidates += [processor.get("size"), config.get("image_size")]
    for value in candidates:
        side = _side(value)
        if side is not None:
            return side
    return DEFAULT_INPUT_SIZE


def _side(value: Any) -> int | None:
    # Sizes appear as 224, [224, 224], {"height": 224, "width": 224} or {"shortest_edge": 224}.
    if isinstance(value, dict):
        value = value.get("height", value.get("shortest_edge"))
    elif isinstance(value, list | tuple) and value:
        value = value[0]
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _triple(
    directory: Path, processor: dict[str, Any], key: str, default: tuple[float, float, float]
) -> tuple[float, float, float]:
    if processor.get(key) is None:
        return default
    try:
        return as_triple(processor[key])
    except ValueError as exc:
        raise WeightsError(f"{directory / 'preprocessor_config.json'}: {key}: {exc}") from exc


def _preset_factory(name: str) -> EncoderFactory:
    def factory(weights: Path | None, *, allow_pickle: bool) -> torch.nn.Module:
        info = get_encoder_info(name)
        if weights is None:
            raise WeightsError(f"encoder {name!r} needs weights: {info.weights_hint}")
        return load_hf_module(weights, info, allow_pickle=allow_pickle)

    return factory


@register_encoder(
    "hf-auto",
    # Placeholders: the real values come from the directory (hf_info / load_hf_encoder).
    embed_dim=0,
    input_size=DEFAULT_INPUT_SIZE,
    needs_weights=True,
    description="transformers vision model from a save_pretrained directory (CLS token); "
    "size and normalisation are read from the directory",
    weights_hint="Pass the directory written by save_pretrained (config.json, model.safetensors).",
)
def _hf_auto(weights: Path | None, *, allow_pickle: bool) -> torch.nn.Module:
    if weights is None:
        raise WeightsError("encoder 'hf-auto' needs weights: pass the saved-model directory")
    return load_hf_module(weights, hf_info(weights), allow_pickle=allow_pickle)


register_encoder(
    "phikon",
    embed_dim=768,
    input_size=224,
    licence="Owkin non-commercial",
    needs_weights=True,
    citation="Filiot et al., Scaling Self-Supervised Learning for Histopathology with Masked "
    "Image Modeling, medRxiv 2023",
    description="Phikon (Owkin): ViT-B/16, iBOT on TCGA; CLS token",
    weights_hint="Save owkin/phikon with save_pretrained and pass the directory.",
)(_preset_factory("phikon"))

register_encoder(
    "phikon-v2",
    embed_dim=1024,
    input_size=224,
    licence="Owkin non-commercial",
    needs_weights=True,
    citation="Filiot et al., Phikon-v2, A large and public feature extractor for biomarker "
    "prediction, arXiv:2409.09173, 2024",
    description="Phikon-v2 (Owkin): ViT-L/16, DINOv2 architecture; CLS token",
    weights_hint="Save owkin/phikon-v2 with save_pretrained and pass the directory.",
)(_preset_factory("phikon-v2"))
