"""Safe weight loading: safetensors by default, pickled checkpoints only with explicit consent.

A pickle can run arbitrary code the moment it is loaded, so the format is decided by a file's
content, never its name, and a safetensors header is checked before any library parses it:
a header that lies about tensor sizes must not reach a reader that trusts it.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from histoguard.errors import UnsafeWeightsError, WeightsError

if TYPE_CHECKING:
    import torch

#: Largest safetensors header accepted; real headers are kilobytes, even for billion-parameter
#: models, so anything near this is corrupt or hostile.
MAX_HEADER_BYTES = 100 * 1024 * 1024

#: Bits per element of every dtype the safetensors format defines.
_DTYPE_BITS = {
    "BOOL": 8,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "I64": 64,
    "U64": 64,
    "F64": 64,
    "C64": 64,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
}

#: Suffixes of pickled checkpoints (plain pickle or torch's zip of pickles).
PICKLE_SUFFIXES = frozenset({".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle"})

#: Keys under which training scripts commonly nest the state dict.
_CONTAINER_KEYS = ("state_dict", "model", "teacher")

_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = 0x80
_CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of any file (a slide, a table), read in 1 MiB chunks, for provenance.

    Raises:
        OSError: the file cannot be read.
    """
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a weights file (:func:`file_sha256`, for provenance records).

    Raises:
        WeightsError: the file cannot be read.
    """
    try:
        return file_sha256(path)
    except OSError as exc:
        raise WeightsError(f"{path}: cannot read weights file ({exc})") from exc


def load_state_dict(path: Path, *, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Load a flat ``{name: tensor}`` state dict onto the CPU.

    The format is decided by content: a file that starts like safetensors is validated and
    loaded with ``safetensors``; a file named ``.safetensors`` that is not valid safetensors is
    rejected (never unpickled); anything that looks pickled (zip magic, pickle protocol byte,
    or a checkpoint suffix) is refused unless ``allow_pickle``, and even then goes through
    ``torch.load(weights_only=True)``, which only rebuilds tensors and plain containers. A
    pickled dict nesting the weights under ``state_dict``, ``model`` or ``teacher`` is unwrapped.

    Raises:
        WeightsError: the file is missing, not a recognised format, corrupt, a safetensors
            header that is inconsistent with the data, or holds something other than tensors.
        UnsafeWeightsError: a pickled checkpoint without ``allow_pickle``.
    """
    path = Path(path)
    if not path.exists():
        raise WeightsError(f"{path}: no such weights file")
    if not path.is_file():
        raise WeightsError(f"{path}: not a file (this encoder takes a single weights file)")
    with path.open("rb") as handle:
        head = handle.read(9)
    # A file named .safetensors is held to the safetensors checks even when it looks pickled:
    # whatever the user allowed, a renamed pickle must fail here rather than be unpickled.
    if path.suffix.lower() == ".safetensors" or _starts_like_safetensors(path, head):
        return _load_safetensors(path)
    looks_pickled = head.startswith(_ZIP_MAGIC) or head[:1] == bytes([_PICKLE_PROTO])
    if looks_pickled or path.suffix.lower() in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise UnsafeWeightsError(
                f"{path}: this is a pickled checkpoint, and loading a pickle can run arbitrary "
                "code. Convert it to safetensors (safetensors.torch.save_file) or, if you trust "
                "its source, pass --allow-pickle (Python: allow_pickle=True); it is then loaded "
                "with torch.load(weights_only=True)"
            )
        return _load_pickled(path)
    raise WeightsError(f"{path}: not a recognised weights file (expected safetensors)")


def first_non_finite(state: Mapping[str, torch.Tensor]) -> str | None:
    """Name of the first floating-point tensor of ``state`` holding NaN or infinity, else None.

    A network with such a weight outputs NaN for every input, which downstream code would then
    read as a class; loaders refuse it.
    """
    import torch

    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def check_safetensors(path: Path) -> dict[str, tuple[int, ...]]:
    """Validate a safetensors file's header against its size, without loading any tensor.

    Checks: the 8-byte little-endian header length N is > 1, fits in the file and is below
    :data:`MAX_HEADER_BYTES`; the N header bytes are a JSON object without duplicate keys;
    every tensor has a known dtype, a shape of non-negative integers, and ``data_offsets``
    ``[begin, end]`` with ``end - begin`` equal to its byte size; the tensors tile the data
    section exactly (no gaps, no overlaps, nothing after the last one).

    Returns:
        Each tensor's shape, by name, as the header declares it (read before any allocation).

    Raises:
        WeightsError: naming the file and the first inconsistency found.
    """
    size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise WeightsError(f"{path}: not a valid safetensors file ({size} bytes, too short)")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len <= 1 or header_len > size - 8 or header_len > MAX_HEADER_BYTES:
            raise WeightsError(
                f"{path}: not a valid safetensors file (header length {header_len} does not "
                f"fit a {size}-byte file)"
            )
        raw = handle.read(header_len)
    if not raw.startswith(b"{"):  # the format requires the header to open the JSON object
        raise WeightsError(f"{path}: not a valid safetensors file (header is not a JSON object)")
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except (UnicodeDecodeError, ValueError) as exc:
        raise WeightsError(f"{path}: safetensors header is not valid JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise WeightsError(f"{path}: safetensors header is not a JSON object")
    _check_entries(path, header, data_size=size - 8 - header_len)
    return {name: tuple(entry["shape"]) for name, entry in header.items() if name != "__metadata__"}


def _starts_like_safetensors(path: Path, head: bytes) -> bool:
    # A plausible header length followed by "{". Zip and pickle files start with bytes that
    # decode to lengths far beyond any real header, so they never pass.
    if len(head) < 9 or head[8:9] != b"{":
        return False
    header_len: int = struct.unpack("<Q", head[:8])[0]
    return 1 < header_len <= min(path.stat().st_size - 8, MAX_HEADER_BYTES)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _check_entries(path: Path, header: dict[str, Any], *, data_size: int) -> None:
    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        if name == "__metadata__":
            if not isinstance(entry, dict) or not all(
                isinstance(value, str) for value in entry.values()
            ):
                raise WeightsError(f"{path}: safetensors __metadata__ is not a string map")
            continue
        spans.append(_check_entry(path, name, entry))
    spans.sort()
    position = 0
    for begin, end, name in spans:
        if begin != position:
            problem = "overlaps the previous tensor" if begin < position else "leaves a gap"
            raise WeightsError(f"{path}: safetensors tensor {name!r} {problem} in the data")
        position = end
    if position != data_size:
        raise WeightsError(
            f"{path}: safetensors header describes {position} bytes of tensor data but the "
            f"file holds {data_size} (truncated or padded)"
        )


def _check_entry(path: Path, name: str, entry: Any) -> tuple[int, int, str]:
    if not isinstance(entry, dict):
        raise WeightsError(f"{path}: safetensors entry {name!r} is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in _DTYPE_BITS:
        raise WeightsError(f"{path}: safetensors tensor {name!r} has unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_is_count(dim) for dim in shape):
        raise WeightsError(f"{path}: safetensors tensor {name!r} has invalid shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_count(offset) for offset in offsets)
        or offsets[1] < offsets[0]
    ):
        raise WeightsError(
            f"{path}: safetensors tensor {name!r} has invalid data_offsets {offsets!r}"
        )
    bits = math.prod(shape) * _DTYPE_BITS[dtype]
    begin, end = offsets
    if bits % 8 != 0 or end - begin != bits // 8:
        raise WeightsError(
            f"{path}: safetensors tensor {name!r} ({dtype} {shape}) needs {bits / 8:g} bytes "
            f"but its data_offsets span {end - begin}"
        )
    return begin, end, name


def _is_count(value: Any) -> bool:
    # JSON booleans parse as bool, a subclass of int; they are not sizes.
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    check_safetensors(path)
    from safetensors.torch import load_file

    try:
        tensors: dict[str, torch.Tensor] = load_file(str(path), device="cpu")
    except Exception as exc:  # the library's own error types vary across versions
        raise WeightsError(f"{path}: cannot load safetensors file ({exc})") from exc
    return tensors


def _load_pickled(path: Path) -> dict[str, torch.Tensor]:
    import torch

    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for forbidden globals, RuntimeError for corrupt
        raise WeightsError(
            f"{path}: torch's weights-only loader refused or failed to read this checkpoint "
            f"(it may hold Python objects other than tensors, which could run code): {exc}"
        ) from exc
    return _unwrap_state_dict(path, loaded)


def _unwrap_state_dict(path: Path, loaded: Any) -> dict[str, torch.Tensor]:
    import torch

    state = loaded
    # Bounded: a pickle can build a dict that contains itself.
    for _ in range(len(_CONTAINER_KEYS) + 1):
        if not isinstance(state, dict) or _all_tensors(state):
            break
        inner = next(
            (state[key] for key in _CONTAINER_KEYS if isinstance(state.get(key), dict)), None
        )
        if inner is None:
            break
        state = inner
    if not isinstance(state, dict):
        raise WeightsError(
            f"{path}: expected a state dict (name -> tensor), got {type(state).__name__}"
        )
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise WeightsError(
                f"{path}: expected a state dict of tensors, but entry {key!r} is "
                f"{type(value).__name__}"
            )
    return state


def _all_tensors(mapping: dict[Any, Any]) -> bool:
    import torch

    return bool(mapping) and all(isinstance(value, torch.Tensor) for value in mapping.values())
