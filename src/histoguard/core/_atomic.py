"""Crash-safe output files: write to a temporary sibling, fsync, verify, then rename.

A file that exists under its final name has always been completely written and verified; a
killed run leaves only hidden temporaries, which the next run removes once their writer is
provably gone (see :mod:`histoguard.core._owner`). Published files get the
mode a plain ``open()`` would give them (``0o666`` less the umask, so 0644 under umask 022),
whatever mode the writer created the temporary with (some, like safetensors, use 0600).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import threading
import uuid
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

from histoguard.core._names import MAX_TEMP_FINAL_BYTES, bounded_part
from histoguard.core._owner import Owner, owner_is_dead, pid_running, this_owner

_TMP_MARK = ".tmp-"
# What follows the mark: HOST-PID-START-HEX8 now, PID-HEX8 from older versions.
_OWNER_HEX = re.compile(r"(?P<owner>.+)-[0-9a-f]{8}")
_OLD_OWNER = re.compile(r"\d{1,10}")
_UMASK_LOCK = threading.Lock()


def _current_umask() -> int:
    """The process umask (reading it means setting it; the lock keeps threads from racing)."""
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _publish_mode(path: Path, mode: int | None = None) -> None:
    """Give ``path`` ``mode``, or else the mode of a file created by ``open()``:
    ``0o666 & ~umask``."""
    path.chmod(0o666 & ~_current_umask() if mode is None else mode)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not every platform supports opening directories.
    with contextlib.suppress(OSError):
        _fsync_path(directory)


@contextlib.contextmanager
def atomic_output(
    final: Path, *, verify: Callable[[Path], None] | None = None, mode: int | None = None
) -> Iterator[Path]:
    """Give the caller a temporary path to write; publish it under ``final`` only if verified.

    Args:
        final: where the finished file must appear.
        verify: called with the temporary path after fsync; it raises if the content is wrong.
        mode: the published file's mode (e.g. ``0o600`` for a secret), set before it is renamed.

    Yields:
        The temporary path: same directory, hidden name ``.FINAL.tmp-HOST-PID-START-HEX8``
        naming this process (:class:`~histoguard.core._owner.Owner`). The published file's
        mode is ``mode``, else ``0o666 & ~umask`` (0644 under umask 022), as for ``open()``.

    Raises:
        Whatever the writer or ``verify`` raises; the temporary file is removed and ``final``
        is left untouched.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(temporary_name(final.name, this_owner()))
    try:
        if mode is not None:
            # Created with its mode, so a secret is never readable by others, even for a moment;
            # a writer that reopens the path truncates it and keeps the mode.
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode))
        yield tmp
        _fsync_path(tmp)
        if verify is not None:
            verify(tmp)
        _publish_mode(tmp, mode)
        tmp.replace(final)
        _fsync_dir(final.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(final: Path, data: bytes, *, mode: int | None = None) -> None:
    """Write ``data`` to ``final`` atomically, verified by reading it back; ``mode`` as for
    :func:`atomic_output`."""

    def verify(tmp: Path) -> None:
        if tmp.read_bytes() != data:
            raise OSError(f"{final}: read-back differs from what was written")

    with atomic_output(final, verify=verify, mode=mode) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(
    final: Path, value: Any, *, default: Callable[[Any], Any] | None = None
) -> None:
    """Write ``value`` as indented, newline-terminated JSON to ``final`` atomically, verified by
    reading it back. ``default`` converts objects ``json`` cannot (e.g. ``float`` for numpy
    scalars)."""
    write_bytes_atomic(final, (json.dumps(value, indent=2, default=default) + "\n").encode())


def temporary_final(final_name: str) -> str:
    """How ``final_name`` is spelled inside its temporaries' names: unchanged up to
    :data:`~histoguard.core._names.MAX_TEMP_FINAL_BYTES` (145) UTF-8 bytes, else a prefix +
    ``~`` + 12 hex of its SHA-256 (:func:`~histoguard.core._names.bounded_part`), so a
    temporary's name is at most 255 bytes (the host part is capped at 63 characters)."""
    return bounded_part(final_name, MAX_TEMP_FINAL_BYTES)


def temporary_name(final_name: str, owner: Owner) -> str:
    """The hidden temporary name for ``final_name`` written by ``owner`` (random last part):
    ``.`` + :func:`temporary_final` + ``.tmp-HOST-PID-START-HEX8``, at most 255 bytes."""
    return f".{temporary_final(final_name)}{_TMP_MARK}{owner.token}-{uuid.uuid4().hex[:8]}"


def parse_temporary(name: str) -> tuple[str, Owner | int] | None:
    """``(final_part, owner)`` from a temporary's file name; None if it is not one of ours.

    ``final_part`` is the final name as :func:`temporary_final` spells it: the final name
    itself unless that is over 145 bytes (compare with ``temporary_final(name)``). The owner
    is an :class:`Owner` for ``.FINAL.tmp-HOST-PID-START-HEX8`` and a bare PID (this host
    assumed) for the older ``.FINAL.tmp-PID-HEX8``.
    """
    if not name.startswith("."):
        return None
    final_name, mark, tail = name[1:].rpartition(_TMP_MARK)
    match = _OWNER_HEX.fullmatch(tail)
    if not (final_name and mark and match):
        return None
    text = match["owner"]
    if _OLD_OWNER.fullmatch(text):
        return final_name, int(text)
    owner = Owner.parse(text)
    return None if owner is None else (final_name, owner)


def remove_stale_temporaries(
    directory: Path, *, names: Collection[str] | None = None, recursive: bool = False
) -> int:
    """Delete temporaries left in ``directory`` by writers that are provably gone.

    The final name (its :func:`temporary_final` spelling, exact up to a SHA-256 collision for
    names over 145 bytes) and the owner are parsed out of each temporary's name (see
    :func:`parse_temporary`), never matched by a glob, so cleaning ``S1.h5`` leaves
    ``S10.h5``'s and ``S1.v2.h5``'s alone. A temporary is removed only when its owner is dead
    by :func:`~histoguard.core._owner.owner_is_dead`: on this host, its PID is not running
    with the recorded start time; from another host, it is older than
    :data:`~histoguard.core._owner.LEASE_SECONDS` (24 h). A temporary in the older
    ``PID-HEX8`` form is taken to be from this host and removed when that PID is not running.
    Names that do not parse, and anything that is not a plain file, are left alone.

    Args:
        directory: output folder to clean.
        names: if given, only consider temporaries of exactly these final file names (e.g. one
            slide's outputs: ``{"S1.h5", "S1.tissue.geojson"}``).
        recursive: also clean every folder below ``directory`` (a training run's ``fold_i/``).

    Returns:
        The number of files removed.
    """
    removed = 0
    me = this_owner()
    wanted = None if names is None else {temporary_final(name) for name in names}
    pattern = f".*{_TMP_MARK}*"
    for tmp in directory.rglob(pattern) if recursive else directory.glob(pattern):
        parsed = parse_temporary(tmp.name)
        if parsed is None or (wanted is not None and parsed[0] not in wanted):
            continue
        owner = parsed[1]
        try:
            info = tmp.lstat()
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(info.st_mode):
            continue
        if isinstance(owner, int):
            dead = owner != me.pid and not pid_running(owner)
        else:  # this process's own temporaries are alive by the start-time check
            dead = owner_is_dead(owner, info.st_mtime)
        if dead:
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed
