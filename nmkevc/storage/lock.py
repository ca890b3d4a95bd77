"""The repository write lock.

An OS advisory lock (flock) on `.nmkevc/lock`: the kernel drops it when the holder
dies, so a crash or Ctrl-C never leaves a stale lock behind, and a second writer is
told at once rather than made to wait.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import RepositoryLockedError

try:
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX
    fcntl = None  # type: ignore[assignment]


class RepoLock:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._fd: int | None = None
        self._depth = 0

    def acquire(self) -> None:
        if self._depth:
            self._depth += 1
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = ""
                try:
                    holder = os.read(fd, 64).decode("ascii", "replace").strip()
                except OSError:
                    pass
                os.close(fd)
                who = f" by process {holder}" if holder else ""
                raise RepositoryLockedError(
                    f"repository is locked{who}: another nmkevc command is writing to it"
                ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode("ascii"))
        self._fd = fd
        self._depth = 1

    def release(self) -> None:
        if not self._depth:
            return
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            fd, self._fd = self._fd, None
            try:
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
