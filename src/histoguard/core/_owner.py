"""Who owns a temporary file or a lock, and whether that owner is provably gone.

A process id alone is not enough on a shared filesystem: a job on another node may own a file
whose PID means nothing here, and PIDs are reused once their process exits. An owner is
therefore written into names and lock files as ``HOST-PID-START``:

- ``HOST``: this machine's host name, with every character outside ``[A-Za-z0-9_]`` replaced
  by ``_`` (so the token splits on ``-``), at most 63 characters. Machines that share an output
  folder are assumed to have different host names.
- ``PID``: the process id.
- ``START``: when that process started. On Linux the ``starttime`` field of
  ``/proc/PID/stat`` (clock ticks since boot); elsewhere psutil's ``create_time()`` in
  centiseconds when psutil is installed; ``0`` when unknown.

An owner is dead (its files may be removed or taken over) only when that is certain:

- same host: the PID is not running, or it runs with a start time other than the recorded one
  (the PID was reused). A running PID with an unknown start time counts as alive.
- another host: nothing can be asked, so the file's modification time must be older than
  :data:`LEASE_SECONDS` (24 h).
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path

#: How long (seconds since its last modification) a file owned by a process on another host is
#: respected: 24 h. A temporary or lock untouched that long belongs to a run that is gone.
LEASE_SECONDS = 24 * 3600

_HOST_UNSAFE = re.compile(r"[^A-Za-z0-9_]")
_TOKEN = re.compile(r"(?P<host>[A-Za-z0-9_]{1,63})-(?P<pid>\d{1,10})-(?P<start>\d{1,20})")


@dataclass(frozen=True)
class Owner:
    """A process on a host.

    Attributes:
        host: sanitised host name (``[A-Za-z0-9_]``, 1-63 characters).
        pid: process id on that host.
        start: the process start time as :func:`process_start` gives it; 0 when unknown.
    """

    host: str
    pid: int
    start: int

    @property
    def token(self) -> str:
        """``HOST-PID-START``, as it appears in temporary names and lock files."""
        return f"{self.host}-{self.pid}-{self.start}"

    @classmethod
    def parse(cls, token: str) -> Owner | None:
        """The owner a ``HOST-PID-START`` token names; None if ``token`` is not exactly one."""
        match = _TOKEN.fullmatch(token)
        if match is None:
            return None
        return cls(match["host"], int(match["pid"]), int(match["start"]))

    def describe(self) -> str:
        """``pid 123 on host node1``, for messages."""
        return f"pid {self.pid} on host {self.host}"


def host_name() -> str:
    """This machine's host name, sanitised for use in a ``HOST-PID-START`` token."""
    name = _HOST_UNSAFE.sub("_", socket.gethostname())[:63]
    return name or "unknown"


def process_start(pid: int) -> int:
    """When process ``pid`` started, in a unit fixed per platform; 0 when it cannot be known.

    Linux: clock ticks since boot (``/proc/PID/stat`` field 22). Elsewhere: centiseconds since
    the epoch from psutil, if installed. Only compared with values from the same host.
    """
    with contextlib.suppress(OSError, ValueError, IndexError):
        text = Path(f"/proc/{pid}/stat").read_bytes()
        # Field 2 (the command) is in parentheses and may hold spaces or ")": split after the last.
        return int(text[text.rindex(b")") + 2 :].split()[19])
    try:
        import psutil  # type: ignore[import-untyped]
    except ImportError:
        return 0
    try:
        return int(psutil.Process(pid).create_time() * 100)
    except Exception:  # psutil's NoSuchProcess, AccessDenied, ...: unknown
        return 0


def this_owner() -> Owner:
    """The calling process (computed per call: a forked child has its own PID and start)."""
    pid = os.getpid()
    return Owner(host_name(), pid, process_start(pid))


def pid_running(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (one we may not signal counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:  # e.g. Windows raises OSError for a PID that does not exist
        return False
    return True


def owner_is_dead(owner: Owner, mtime: float, *, now: float | None = None) -> bool:
    """Whether the file's ``owner`` is certainly gone (see the module docs for the rules).

    Args:
        owner: who wrote the file.
        mtime: the file's modification time, seconds since the epoch (for other hosts).
        now: the current time, seconds since the epoch (default: ``time.time()``).
    """
    if owner.host != host_name():
        return (time.time() if now is None else now) - mtime > LEASE_SECONDS
    if not pid_running(owner.pid):
        return True
    if owner.start == 0:
        return False  # cannot tell a reused PID from the owner: keep
    current = process_start(owner.pid)
    return current != 0 and current != owner.start
