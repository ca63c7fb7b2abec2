"""Per-slide locks, so two runs writing to the same output folder never work on one slide at once.

Before a batch works on slide ``S1`` it creates ``OUT/.S1.lock`` with ``O_CREAT | O_EXCL``
(atomic on local filesystems and NFSv3+); the file holds the owner (host, PID, process start
time, see :mod:`histoguard.core._owner`) and when it was taken. A second run that finds the
lock held by a live owner skips the slide (status ``locked``); a lock whose owner is provably
dead (same rules as stale temporaries: on this host, the PID no longer runs with that start
time; from another host, untouched for :data:`~histoguard.core._owner.LEASE_SECONDS`) is taken
over. The holder refreshes the lock's modification time while it works (at most once a minute)
and removes the lock when it is done, whatever happened.

Taking over a stale lock is serialised by a second file, ``OUT/.S1.lock.break``, also created
with ``O_EXCL``: under it the taker reads the lock again and removes it only if it is still the
stale one it judged, so two runs that both find the same stale lock cannot both end up
holding the slide.

A whole output folder is held by a batch (tile, extract) under ``OUT/.histoguard-run.lock``
(:func:`run_lock`): a JSON record of the run's settings key and of every live run that holds
it. Runs with the same settings share the folder (the per-slide locks share the work); a run
whose settings differ from a live holder's is refused up front (:class:`ConfigError`). Holders
that are provably dead are dropped from the record, so a killed run's lock is taken over. The
record is only read and rewritten under ``OUT/.histoguard-run.lock.mutex`` (``O_EXCL``).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from histoguard.core._atomic import write_bytes_atomic
from histoguard.core._names import bounded_stem
from histoguard.core._owner import LEASE_SECONDS, Owner, owner_is_dead, this_owner
from histoguard.errors import ConfigError

#: A lock (or break file) whose content cannot be read is respected for this long (seconds since
#: it was modified): its writer may be between creating it and writing it.
UNREADABLE_GRACE_SECONDS = 60.0
#: The holder touches its lock at most this often (seconds), so another host sees it is alive.
REFRESH_SECONDS = 60.0


@dataclass(frozen=True)
class LockHolder:
    """Who holds a lock another run found.

    Attributes:
        owner: the holding process, None when the lock file could not be read.
        since: when the lock was taken, ISO 8601 UTC (empty when unknown).
    """

    owner: Owner | None
    since: str

    def describe(self) -> str:
        """``pid 123 on host node1 since 2026-01-01T00:00:00Z``, for messages."""
        who = self.owner.describe() if self.owner else "an unknown process"
        return f"{who} since {self.since}" if self.since else who


class _HeldFile:
    """A lock file this run holds, kept fresh by :meth:`refresh`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._refreshed = time.monotonic()

    def refresh(self) -> None:
        """Touch the lock file (at most once per :data:`REFRESH_SECONDS`), so runs on other
        hosts see its holder is alive."""
        now = time.monotonic()
        if now - self._refreshed >= REFRESH_SECONDS:
            self._refreshed = now
            with contextlib.suppress(OSError):
                os.utime(self.path)


class SlideLock(_HeldFile):
    """A held lock file; :meth:`release` removes it if it is still this holder's."""

    def __init__(self, path: Path, content: bytes) -> None:
        super().__init__(path)
        self._content = content

    def release(self) -> None:
        """Remove the lock file, unless another run has (wrongly) taken it over meanwhile."""
        if _read_bytes(self.path) == self._content:
            self.path.unlink(missing_ok=True)


def lock_path(directory: Path, stem: str) -> Path:
    """The lock file of slide ``stem`` in output folder ``directory``: ``.STEM.lock``, with
    ``STEM`` bounded to 150 bytes (:func:`~histoguard.core._names.bounded_stem`)."""
    return directory / f".{bounded_stem(stem)}.lock"


def try_lock(path: Path) -> SlideLock | LockHolder:
    """Take the lock file ``path``, taking over a stale one.

    Returns:
        The :class:`SlideLock` when taken, else the :class:`LockHolder` who has it.

    Raises:
        OSError: the lock cannot be created for another reason than that it exists (e.g. the
            folder is read-only).
    """
    holder = LockHolder(None, "")
    for _ in range(3):
        lock = _create(path)
        if lock is not None:
            return lock
        seen = _read_bytes(path)
        if seen is None:
            continue  # released between our attempt and the read: try again
        holder, stale = _judge(path, seen)
        if not stale or not _break(path, seen):
            return holder
    return holder


@contextlib.contextmanager
def slide_lock(directory: Path, stem: str) -> Iterator[SlideLock | LockHolder]:
    """Hold slide ``stem``'s lock in ``directory`` for the block, if it can be taken.

    Yields:
        The held :class:`SlideLock` (released when the block ends, even on error), or the
        :class:`LockHolder` of a live lock another run holds (nothing to release).
    """
    got = try_lock(lock_path(directory, stem))
    try:
        yield got
    finally:
        if isinstance(got, SlideLock):
            got.release()


def _owner_record() -> dict[str, Any]:
    """This process as lock files record it, with when and a nonce unique to this taking."""
    owner = this_owner()
    return {
        "owner": owner.token,
        "host": owner.host,
        "pid": owner.pid,
        "start": owner.start,
        "since": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "nonce": uuid.uuid4().hex,
    }


def _create(path: Path) -> SlideLock | None:
    content = (json.dumps(_owner_record()) + "\n").encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return None
    try:
        os.write(fd, content)
        os.fsync(fd)
    finally:
        os.close(fd)
    return SlideLock(path, content)


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return None


def _judge(path: Path, content: bytes) -> tuple[LockHolder, bool]:
    """Who holds the lock with ``content``, and whether that holder is provably gone."""
    owner: Owner | None = None
    since = ""
    with contextlib.suppress(ValueError, TypeError, KeyError):
        record = json.loads(content)
        owner = Owner.parse(str(record["owner"]))
        since = str(record.get("since", ""))
    mtime = _mtime(path)
    if mtime is None:
        return LockHolder(owner, since), True  # gone already: the next attempt creates it
    if owner is None:
        return LockHolder(None, since), time.time() - mtime > UNREADABLE_GRACE_SECONDS
    return LockHolder(owner, since), owner_is_dead(owner, mtime)


def _break(path: Path, stale: bytes) -> bool:
    """Remove the lock at ``path`` if it still holds ``stale``; False if another run is at it."""
    breaker = path.with_name(path.name + ".break")
    try:
        fd = os.open(breaker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        mtime = _mtime(breaker)
        if mtime is not None and time.time() - mtime > UNREADABLE_GRACE_SECONDS:
            breaker.unlink(missing_ok=True)  # left by a run killed while breaking
        return False
    os.close(fd)
    try:
        if _read_bytes(path) == stale:
            path.unlink(missing_ok=True)
        return True
    finally:
        breaker.unlink(missing_ok=True)


#: The folder-level lock a tile or extract batch holds on its output folder.
RUN_LOCK_NAME = ".histoguard-run.lock"
#: How long (seconds) a run waits for the record's mutex before giving up.
MUTEX_WAIT_SECONDS = UNREADABLE_GRACE_SECONDS + 30.0


class RunLock(_HeldFile):
    """This run's share of a folder's run lock; :meth:`release` gives it back."""

    def __init__(self, path: Path, nonce: str) -> None:
        super().__init__(path)
        self._nonce = nonce

    def release(self) -> None:
        """Drop this run from the record; the file is removed with its last holder."""
        with _mutex(self.path):
            key, runs = _live_runs(self.path)
            left = [run for run in runs if run.get("nonce") != self._nonce]
            if left:
                _write_runs(self.path, key, left)
            else:
                self.path.unlink(missing_ok=True)


@contextlib.contextmanager
def run_lock(directory: Path, key: str) -> Iterator[RunLock]:
    """Hold output folder ``directory`` for a batch whose settings are ``key``, for the block.

    Runs with the same ``key`` share the folder; runs whose holders are all provably gone (same
    rules as stale temporaries) no longer count.

    Raises:
        ConfigError: a live run with other settings holds the folder (names it and the fix);
            nothing has been written to the folder but the lock's own files.
    """
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / RUN_LOCK_NAME
    me = _owner_record()
    with _mutex(path):
        held_key, runs = _live_runs(path)
        if runs and held_key != key:
            first = runs[0]
            holder = LockHolder(
                Owner.parse(str(first.get("owner", ""))), str(first.get("since", ""))
            )
            raise ConfigError(
                f"{directory} is in use by another run with different settings "
                f"({holder.describe()}{f' and {len(runs) - 1} more' if len(runs) > 1 else ''})"
                "; mixing settings in one folder would leave outputs at both. Wait for it to "
                "finish, or give another --out. If that run is gone (killed on another "
                f"machine: its lock is kept {LEASE_SECONDS // 3600} h), delete {path} and rerun"
            )
        _write_runs(path, key, [*runs, me])
    lock = RunLock(path, str(me["nonce"]))
    try:
        yield lock
    finally:
        lock.release()


def _live_runs(path: Path) -> tuple[str, list[dict[str, Any]]]:
    """The record's settings key and its holders that are not provably dead (none when the
    file is missing or unreadable: it is only ever written whole, under the mutex)."""
    content, mtime = _read_bytes(path), _mtime(path)
    if content is None or mtime is None:
        return "", []
    try:
        record = json.loads(content)
        key, runs = str(record["key"]), list(record["runs"])
    except (ValueError, TypeError, KeyError):
        return "", []
    live = []
    for run in runs:
        owner = Owner.parse(str(run.get("owner", ""))) if isinstance(run, dict) else None
        if owner is not None and not owner_is_dead(owner, mtime):
            live.append(run)
    return key, live


def _write_runs(path: Path, key: str, runs: list[dict[str, Any]]) -> None:
    write_bytes_atomic(path, (json.dumps({"key": key, "runs": runs}, indent=1) + "\n").encode())


@contextlib.contextmanager
def _mutex(path: Path) -> Iterator[None]:
    """Hold ``PATH.mutex`` (``O_EXCL``) for the block; one left by a killed run (older than
    :data:`UNREADABLE_GRACE_SECONDS`) is removed."""
    mutex = path.with_name(path.name + ".mutex")
    deadline = time.monotonic() + MUTEX_WAIT_SECONDS
    while True:
        try:
            os.close(os.open(mutex, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            break
        except FileExistsError:
            mtime = _mtime(mutex)
            if mtime is not None and time.time() - mtime > UNREADABLE_GRACE_SECONDS:
                mutex.unlink(missing_ok=True)
            elif time.monotonic() > deadline:
                raise ConfigError(
                    f"{mutex} has been held for {MUTEX_WAIT_SECONDS:.0f} s; if no other run is "
                    "starting on this folder, delete it and rerun"
                ) from None
            time.sleep(0.01)
    try:
        yield
    finally:
        mutex.unlink(missing_ok=True)
