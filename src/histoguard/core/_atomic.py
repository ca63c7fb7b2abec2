"""Crash-safe output files: write to a temporary sibling, fsync, verify, then rename.

A file that exists under its final name has always been completely written and verified; a
killed run leaves only hidden temporaries, which the next run removes. Published files get the
mode a plain ``open()`` would give them (``0o666`` less the umask, so 0644 under umask 022),
whatever mode the writer created the temporary with (some, like safetensors, use 0600).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import uuid
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

_TMP_MARK = ".tmp-"
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
        The temporary path (same directory, hidden name carrying this process id). The published
        file's mode is ``mode``, else ``0o666 & ~umask`` (0644 under umask 022), as for
        ``open()``.

    Raises:
        Whatever the writer or ``verify`` raises; the temporary file is removed and ``final``
        is left untouched.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}{_TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
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


def remove_stale_temporaries(
    directory: Path, prefix: str = "", *, names: Collection[str] | None = None
) -> int:
    """Delete temporaries left in ``directory`` by processes that no longer run.

    The temporary of ``FINAL`` is ``.FINAL.tmp-PID-HEX``; the final name is parsed back out of
    it, never matched by a glob prefix (so cleaning slide ``S1`` leaves ``S10``'s alone).

    Args:
        directory: output folder to clean.
        prefix: only consider temporaries whose final name is exactly ``prefix`` or starts
            with ``prefix + "."`` (a slide stem followed by its output suffix).
        names: if given, only consider temporaries of exactly these final file names.

    Returns:
        The number of files removed.
    """
    removed = 0
    for tmp in directory.glob(f".*{_TMP_MARK}*"):
        final_name, _, owner = tmp.name[1:].rpartition(_TMP_MARK)
        if names is not None and final_name not in names:
            continue
        if prefix and not (final_name == prefix or final_name.startswith(prefix + ".")):
            continue
        pid_text = owner.split("-", 1)[0]
        pid = int(pid_text) if pid_text.isdigit() else None
        if pid is not None and (pid == os.getpid() or _pid_alive(pid)):
            continue  # another live writer (or this one) owns it
        tmp.unlink(missing_ok=True)
        removed += 1
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
