"""Safe weight loading: hostile pickles never run, lying safetensors headers never load."""

from __future__ import annotations

import contextlib
import hashlib
import json
import pathlib
import pickle
import shutil
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from histoguard.core._weights import check_safetensors, load_state_dict, sha256_file
from histoguard.errors import UnsafeWeightsError, WeightsError


class _TouchOnUnpickle:
    """Unpickling this calls ``Path.touch(marker)``: proof that a loader ran pickled code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[Path]]:
        return (pathlib.Path.touch, (self.marker,))


def _hostile_torch_zip(directory: Path, name: str = "evil.pt") -> tuple[Path, Path]:
    marker = directory / "PWNED"
    path = directory / name
    torch.save({"weight": torch.zeros(2), "payload": _TouchOnUnpickle(marker)}, path)
    return path, marker


def _hostile_plain_pickle(directory: Path, name: str = "evil.pkl") -> tuple[Path, Path]:
    marker = directory / "PWNED"
    path = directory / name
    path.write_bytes(pickle.dumps({"weight": 1, "payload": _TouchOnUnpickle(marker)}))
    return path, marker


def _raw_safetensors(path: Path, header: Any, data: bytes) -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def test_the_hostile_payload_is_live(tmp_path: Path) -> None:
    # Control: the refusals below mean something only if unpickling really runs the payload.
    path, marker = _hostile_plain_pickle(tmp_path)
    pickle.loads(path.read_bytes())
    assert marker.exists()


@pytest.mark.parametrize("name", ["evil.pt", "evil.pth", "evil.bin", "evil.ckpt", "weights"])
@pytest.mark.parametrize("make", [_hostile_torch_zip, _hostile_plain_pickle])
def test_pickle_is_refused_without_consent(tmp_path: Path, name: str, make: Any) -> None:
    path, marker = make(tmp_path, name)
    with pytest.raises(UnsafeWeightsError) as caught:
        load_state_dict(path)
    message = str(caught.value)
    assert str(path) in message
    assert "arbitrary code" in message
    assert "safetensors" in message and "--allow-pickle" in message
    assert "allow_pickle=True" in message
    assert not marker.exists()


@pytest.mark.parametrize("make", [_hostile_torch_zip, _hostile_plain_pickle])
def test_consent_still_goes_through_the_weights_only_loader(tmp_path: Path, make: Any) -> None:
    path, marker = make(tmp_path, "evil.pt")
    with pytest.raises(WeightsError, match="weights-only loader"):
        load_state_dict(path, allow_pickle=True)
    assert not marker.exists()


@pytest.mark.parametrize("allow_pickle", [False, True])
@pytest.mark.parametrize("make", [_hostile_torch_zip, _hostile_plain_pickle])
def test_pickle_renamed_safetensors_is_never_unpickled(
    tmp_path: Path, make: Any, allow_pickle: bool
) -> None:
    source, marker = make(tmp_path, "evil.pt")
    renamed = tmp_path / "model.safetensors"
    shutil.copyfile(source, renamed)
    with pytest.raises(WeightsError, match=r"model\.safetensors") as caught:
        load_state_dict(renamed, allow_pickle=allow_pickle)
    assert not isinstance(caught.value, UnsafeWeightsError)
    assert not marker.exists()


def test_safetensors_round_trip(tmp_path: Path) -> None:
    tensors = {
        "weight": torch.randn(3, 4),
        "index": torch.arange(5, dtype=torch.int64),
        "half": torch.ones(2, 2, dtype=torch.bfloat16),
        "empty": torch.zeros(0, 7),
    }
    path = tmp_path / "model.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    check_safetensors(path)
    loaded = load_state_dict(path)
    assert loaded.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype
        assert torch.equal(loaded[name], tensor)


def test_format_is_decided_by_content_not_name(tmp_path: Path) -> None:
    # safetensors content under a pickle-ish name loads without any consent.
    path = tmp_path / "pytorch_model.bin"
    save_file({"weight": torch.ones(2)}, str(path))
    assert torch.equal(load_state_dict(path)["weight"], torch.ones(2))


def test_header_lying_about_sizes(tmp_path: Path) -> None:
    # The shape says 1000 floats (4000 bytes) and the offsets agree, but the file holds 40.
    header = {"w": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]}}
    path = _raw_safetensors(tmp_path / "lying.safetensors", header, b"\0" * 40)
    with pytest.raises(WeightsError, match=r"lying\.safetensors.*4000 bytes"):
        load_state_dict(path)


def test_shape_disagreeing_with_offsets(tmp_path: Path) -> None:
    header = {"w": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 40]}}
    path = _raw_safetensors(tmp_path / "lying.safetensors", header, b"\0" * 40)
    with pytest.raises(WeightsError, match="needs 4000 bytes but its data_offsets span 40"):
        load_state_dict(path)


def test_truncated_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_file({"weight": torch.randn(64, 64)}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(WeightsError, match="truncated"):
        load_state_dict(path)
    path.write_bytes(data[:20])  # cut inside the header
    with pytest.raises(WeightsError, match="header length"):
        load_state_dict(path)


def test_header_length_larger_than_file(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", 10_000) + b'{"a": 1}')
    with pytest.raises(WeightsError, match="header length 10000"):
        load_state_dict(path)


def _entry(dtype: str, shape: list[int], begin: int, end: int) -> dict[str, Any]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


@pytest.mark.parametrize(
    ("header", "data", "problem"),
    [
        ({"a": _entry("F32", [2], 0, 8), "b": _entry("F32", [2], 4, 12)}, 12, "overlaps"),
        ({"a": _entry("F32", [2], 0, 8), "b": _entry("F32", [2], 12, 20)}, 20, "gap"),
        ({"a": _entry("F32", [2], 0, 8)}, 16, "padded"),
        ({"a": _entry("X99", [2], 0, 8)}, 8, "unknown dtype"),
        ({"a": _entry("F32", [True, 2], 0, 8)}, 8, "invalid shape"),
        ({"a": _entry("F32", [-2], 0, 8)}, 8, "invalid shape"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, 8, "data_offsets"),
        ({"a": {"dtype": "F32", "shape": [2]}}, 8, "data_offsets"),
        ({"__metadata__": {"k": 1}, "a": _entry("F32", [2], 0, 8)}, 8, "__metadata__"),
        (b'{"a": 1, "a": 2}', 0, "duplicate key"),
        (b"[1, 2, 3]", 0, "not valid safetensors|not a JSON object"),
        (b'{"a": ', 0, "not valid JSON"),
        (b"{\xff\xfe}", 0, "not valid JSON"),
    ],
)
def test_inconsistent_headers(tmp_path: Path, header: Any, data: int, problem: str) -> None:
    path = _raw_safetensors(tmp_path / "bad.safetensors", header, b"\0" * data)
    with pytest.raises(WeightsError, match=problem):
        load_state_dict(path)


def _valid_safetensors_bytes() -> bytes:
    header = {
        "__metadata__": {"format": "pt"},
        "a": _entry("F32", [2, 3], 0, 24),
        "b": _entry("I64", [2], 24, 40),
    }
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + bytes(range(40))


_FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@_FUZZ
@given(content=st.binary(max_size=200), name=st.sampled_from(["f.safetensors", "f", "f.pt"]))
def test_arbitrary_bytes_load_or_raise_weights_error(
    tmp_path: Path, content: bytes, name: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with contextlib.suppress(WeightsError):
        load_state_dict(path, allow_pickle=True)


@_FUZZ
@given(data=st.data())
def test_damaged_safetensors_load_or_raise_weights_error(tmp_path: Path, data: Any) -> None:
    content = bytearray(_valid_safetensors_bytes())
    for _ in range(data.draw(st.integers(1, 3))):
        position = data.draw(st.integers(0, len(content) - 1))
        content[position] = data.draw(st.integers(0, 255))
    content = content[: data.draw(st.integers(0, len(content)))]
    path = tmp_path / "damaged.safetensors"
    path.write_bytes(bytes(content))
    with contextlib.suppress(WeightsError):
        loaded = load_state_dict(path)
        assert all(isinstance(value, torch.Tensor) for value in loaded.values())


def test_torch_saved_state_dict_needs_consent(tmp_path: Path) -> None:
    state = {"layer.weight": torch.randn(3, 2), "layer.bias": torch.zeros(3)}
    path = tmp_path / "plain.pt"
    torch.save(state, path)
    with pytest.raises(UnsafeWeightsError):
        load_state_dict(path)
    loaded = load_state_dict(path, allow_pickle=True)
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[key], state[key]) for key in state)
    # torch's pre-1.6 format is a bare pickle stream: recognised by its protocol byte.
    legacy = tmp_path / "legacy"
    torch.save(state, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafeWeightsError):
        load_state_dict(legacy)
    assert torch.equal(
        load_state_dict(legacy, allow_pickle=True)["layer.bias"], state["layer.bias"]
    )


@pytest.mark.parametrize(
    "wrap",
    [
        lambda s: {"state_dict": s, "epoch": 3},
        lambda s: {"model": s, "optimizer": {"lr": 0.1}},
        lambda s: {"teacher": s, "student": {"x": torch.zeros(1)}},
        lambda s: {"model": {"state_dict": s}},
    ],
)
def test_common_containers_are_unwrapped(tmp_path: Path, wrap: Any) -> None:
    state = {"weight": torch.randn(2, 2)}
    path = tmp_path / "checkpoint.ckpt"
    torch.save(wrap(state), path)
    loaded = load_state_dict(path, allow_pickle=True)
    assert list(loaded) == ["weight"]
    assert torch.equal(loaded["weight"], state["weight"])


@pytest.mark.parametrize(
    "content",
    [{"weight": torch.zeros(1), "step": 3}, [torch.zeros(1)], {"weight": [torch.zeros(1)]}],
)
def test_non_tensor_leaves_are_rejected(tmp_path: Path, content: Any) -> None:
    path = tmp_path / "checkpoint.pth"
    torch.save(content, path)
    with pytest.raises(WeightsError, match="state dict"):
        load_state_dict(path, allow_pickle=True)


def test_missing_and_unrecognised_files(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="no such weights file"):
        load_state_dict(tmp_path / "absent.safetensors")
    with pytest.raises(WeightsError, match="not a file"):
        load_state_dict(tmp_path)
    text = tmp_path / "weights.txt"
    text.write_text("these are not weights")
    with pytest.raises(WeightsError, match="not a recognised weights file") as caught:
        load_state_dict(text, allow_pickle=True)
    assert not isinstance(caught.value, UnsafeWeightsError)


def test_sha256_file_streams_the_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "blob.bin"
    data = bytes(range(256)) * 9000  # larger than one read chunk
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    with pytest.raises(WeightsError, match="cannot read"):
        sha256_file(tmp_path / "absent")
