"""Crash-safe file writes: temp file, fsync, rename, fsync the directory.

A reader sees either the old file or the complete new one, whatever moment a crash
or Ctrl-C lands on; that is what keeps objects and refs from ever being torn.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from .faults import crash_point


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems cannot fsync a directory
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = 0o644, what: str = "file") -> None:
    """Replace `path` with `data` atomically; `what` names the boundary for crash tests."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        crash_point("write", what)
        os.replace(tmp, path)
        crash_point("rename", what)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str, what: str = "file") -> None:
    atomic_write(path, text.encode("utf-8"), what=what)
