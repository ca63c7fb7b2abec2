"""Outputs appear complete and verified, or not at all."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from histoguard.core._atomic import atomic_output, remove_stale_temporaries, write_bytes_atomic


def test_write_bytes_atomic(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "a.txt"
    write_bytes_atomic(target, b"hello")
    assert target.read_bytes() == b"hello"
    assert [p.name for p in target.parent.iterdir()] == ["a.txt"]


def test_failed_verification_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")

    def reject(_: Path) -> None:
        raise ValueError("bad content")

    with (
        pytest.raises(ValueError, match="bad content"),
        atomic_output(target, verify=reject) as tmp,
    ):
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path: Path) -> None:
    dead = tmp_path / ".x.h5.tmp-999999999-abcd1234"
    alive = tmp_path / f".y.h5.tmp-{os.getppid()}-abcd1234"
    dead.write_bytes(b"")
    alive.write_bytes(b"")
    assert remove_stale_temporaries(tmp_path) == 1
    assert not dead.exists() and alive.exists()


def test_stale_cleanup_for_one_slide_leaves_a_longer_named_slide_alone(tmp_path: Path) -> None:
    # Cleaning slide S1 must not delete S10's temporaries (the old prefix glob did).
    s1 = tmp_path / ".S1.h5.tmp-999999999-abcd1234"
    s10 = tmp_path / ".S10.h5.tmp-999999999-abcd1234"
    s1.write_bytes(b"")
    s10.write_bytes(b"")
    assert remove_stale_temporaries(tmp_path, names={"S1.h5"}) == 1
    assert not s1.exists()
    assert s10.exists()
    assert remove_stale_temporaries(tmp_path, names={"other.h5"}) == 0
    assert s10.exists()


def test_recursive_cleanup_reaches_sub_folders_only_when_asked(tmp_path: Path) -> None:
    # A training run writes fold_i/model.safetensors: a killed run's temporary sits one down.
    (tmp_path / "fold_0").mkdir()
    nested = tmp_path / "fold_0" / ".model.json.tmp-999999999-abcd1234"
    nested.write_bytes(b"")
    assert remove_stale_temporaries(tmp_path) == 0 and nested.exists()
    assert remove_stale_temporaries(tmp_path, recursive=True) == 1
    assert not nested.exists()
