"""The repository write lock.

An OS advisory lock (flock) on `.nmkevc/lock`: the kernel drops it when the holder
dies, so a crash or Ctrl-C never leaves a stale lock behind. The holder writes who it
is (pid, command, start time) into the file so a refused or waiting writer can say
who is in the way. By default a second writer is refused at once; with a wait
(seconds, or `math.inf`) it polls until the lock is free or the time runs out.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import stat
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import NmkevcError, RepositoryLockedError
from .faults import crash_point

try:
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX
    fcntl = None  # type: ignore[assignment]

POLL_SECONDS = 0.2
#: A lock file holds one short JSON record; anything longer is not ours.
MAX_LOCK_BYTES = 4096
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


@dataclass(frozen=True)
class LockHolder:
    """What the lock file says about the process holding it."""

    pid: int | None
    command: str
    since: float | None

    def describe(self) -> str:
        parts = [f"process {self.pid}" if self.pid else "another process"]
        if self.command:
            parts.append(f"({self.command[:80]})")
        if self.since:
            parts.append(f"since {time.strftime('%H:%M:%S', time.localtime(self.since))}")
        return " ".join(parts)

    @classmethod
    def parse(cls, text: str) -> LockHolder:
        try:
            d = json.loads(text)
            return cls(int(d["pid"]), str(d.get("command", "")), float(d["time"]))
        except (ValueError, KeyError, TypeError):
            pid = text.strip()
            return cls(int(pid) if pid.isdigit() else None, "", None)


def _me() -> bytes:
    cmd = " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))
    return json.dumps({"pid": os.getpid(), "command": cmd, "time": time.time()}).encode("utf-8")


class RepoLock:
    def __init__(self, path: Path, wait: float = 0.0,
                 on_wait: Callable[[LockHolder], None] | None = None):
        self.path = Path(path)
        #: seconds to wait for a busy lock (0: refuse at once; math.inf: wait forever)
        self.wait = wait
        #: told once, when a writer starts waiting, who holds the lock
        self.on_wait = on_wait
        self._fd: int | None = None
        self._depth = 0

    def holder(self) -> LockHolder | None:
        """Who holds the lock now, as recorded in the file (None if nobody says)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | _NOFOLLOW)
        except OSError:
            return None
        try:
            text = os.read(fd, MAX_LOCK_BYTES).decode("utf-8", errors="replace")
        except OSError:
            return None
        finally:
            os.close(fd)
        return LockHolder.parse(text) if text.strip() else None

    def _open(self) -> int:
        """The lock file, opened without following a symlink: created here if absent, else
        used only if it is plainly a lock file (regular, one link, small, holding nothing or a
        lock record), so the lock never truncates a file it did not create."""
        for _ in range(100):  # the file may vanish between the two opens (a remote's cleanup)
            try:
                return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o644)
            except FileExistsError:
                pass
            try:
                fd = os.open(self.path, os.O_RDWR | _NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
            except FileNotFoundError:
                continue
            except OSError as e:
                if e.errno == errno.ELOOP or os.path.islink(self.path):
                    raise NmkevcError(f"{self.path} is a symbolic link; a lock file is never followed "
                                      "(remove the link)") from None
                raise
            st = os.fstat(fd)
            text = os.pread(fd, MAX_LOCK_BYTES + 1, 0) if stat.S_ISREG(st.st_mode) else b""
            ours = (stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and len(text) <= MAX_LOCK_BYTES
                    and (not text.strip() or LockHolder.parse(text.decode("utf-8", "replace")).pid is not None))
            if not ours:
                os.close(fd)
                raise NmkevcError(f"{self.path} is not an nmkevc lock file (not a plain file holding a "
                                  "lock record); refusing to write to it (move it away)")
            return fd
        raise NmkevcError(f"{self.path} keeps disappearing; cannot take the lock")

    def acquire(self) -> None:
        if self._depth:
            self._depth += 1
            return
        fd = self._open()
        if fcntl is not None:
            deadline = time.monotonic() + self.wait if self.wait > 0 else None
            told = False
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError:
                    pass
                holder = self.holder() or LockHolder(None, "", None)
                if deadline is None or time.monotonic() >= deadline:
                    os.close(fd)
                    waited = f" after waiting {self.wait:g}s" if self.wait > 0 else ""
                    hint = "" if self.wait > 0 else " (use --wait to wait for it)"
                    raise RepositoryLockedError(
                        f"repository is locked by {holder.describe()}{waited}: another nmkevc "
                        f"command is writing to it{hint}"
                    )
                if not told and self.on_wait is not None:
                    self.on_wait(holder)
                    told = True
                time.sleep(POLL_SECONDS if math.isinf(self.wait) else
                           max(0.0, min(POLL_SECONDS, deadline - time.monotonic())))
        with contextlib.suppress(OSError):  # who holds it is a courtesy: a full disk must not stop gc
            me = _me()
            os.pwrite(fd, me, 0)
            os.ftruncate(fd, len(me))
        self._fd = fd
        self._depth = 1
        crash_point("lock")

    def release(self) -> None:
        if not self._depth:
            return
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, 0)
            finally:
                os.close(fd)  # closing releases the flock

    @property
    def held(self) -> bool:
        return self._depth > 0

    def __enter__(self) -> RepoLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
