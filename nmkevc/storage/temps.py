"""Temporary files and directories that a killed command may leave behind, and how
gc tells ours (and dead) from anything else.

- Temp files of atomic writes inside the repository: `.<name>.<random>.tmp`.
- Directories written beside a target and renamed into place at the end (an export):
  each is *claimed* by a small record under `.nmkevc/tmp/` that the writer keeps
  flock-ed while it works. A record nobody holds belongs to a dead writer, so its
  directory can go; a live export is never touched.
- A repository being created: `.nmkevc.init-<random>` beside `.nmkevc`, holding its own
  `lock` flock-ed by `init` until the rename.
Names come from mkstemp/mkdtemp (unpredictable, created exclusively), never a pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from .fsutil import fsync_dir

try:
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX
    fcntl = None  # type: ignore[assignment]

CLAIMS_DIR = "tmp"
INIT_PREFIX = ".nmkevc.init-"


def _try_lock(fd: int) -> bool:
    """Take the flock without waiting; False if someone alive holds it."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False


def is_abandoned(lock_path: Path) -> bool:
    """Nobody alive holds the flock on this file (or it is gone)."""
    try:
        fd = os.open(lock_path, os.O_RDWR)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    try:
        return _try_lock(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def claimed_tempdir(repo_dir: Path, parent: Path, prefix: str, suffix: str) -> Iterator[Path]:
    """mkdtemp(parent) recorded in the repository, so gc can remove it if we die.

    The caller renames the directory into place before leaving the block (or raises:
    the directory is then removed here)."""
    claims = Path(repo_dir) / CLAIMS_DIR
    try:
        claims.mkdir(exist_ok=True)
        fd, claim = tempfile.mkstemp(prefix=".claim.", suffix=".json", dir=claims)
    except OSError:  # a read-only repository: export anyway, without a record for gc
        fd, claim = -1, ""
    try:
        if fd >= 0:
            _try_lock(fd)
        tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=parent))
        if fd >= 0:
            record = {"path": str(tmp.resolve()), "prefix": prefix, "suffix": suffix}
            os.write(fd, json.dumps(record).encode())
            os.fsync(fd)
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    finally:
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.unlink(claim)
            os.close(fd)


def reap_claims(repo_dir: Path) -> int:
    """Remove the directories of dead writers (and their records); returns how many."""
    claims = Path(repo_dir) / CLAIMS_DIR
    if not claims.is_dir():
        return 0
    n = 0
    for rec in sorted(claims.glob(".claim.*.json")):
        if not is_abandoned(rec):
            continue
        try:
            d = json.loads(rec.read_text("utf-8"))
            path = Path(d["path"])
            ours = path.name.startswith(d["prefix"]) and path.name.endswith(d["suffix"]) and path.name[0] == "."
        except (OSError, ValueError, KeyError, TypeError):
            path, ours = None, False  # a torn record: the claim goes, nothing else
        if ours and path is not None and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
            n += 1
        with contextlib.suppress(OSError):
            rec.unlink()
    return n


def remove_stale_temps(root: Path) -> int:
    """Delete temp files left by interrupted atomic writes under root; returns how many.
    Run only under the repository lock (a live writer's temp file would go too)."""
    n = 0
    for p in Path(root).rglob(".*.tmp"):
        if p.is_file():
            with contextlib.suppress(OSError):
                p.unlink()
                n += 1
    return n


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


def make_init_dir(root: Path) -> Path:
    return Path(tempfile.mkdtemp(prefix=INIT_PREFIX, dir=root))


def reap_init_dirs(root: Path) -> int:
    """Remove half-built repositories of killed `init`s in root; returns how many."""
    n = 0
    for d in sorted(Path(root).glob(INIT_PREFIX + "*")):
        if not d.is_dir():
            continue
        lock = d / "lock"
        # init takes the lock right after mkdtemp; a lockless directory is dead once it is not brand new
        if lock.exists() and is_abandoned(lock) or not lock.exists() and _age(d) > 60:
            shutil.rmtree(d, ignore_errors=True)
            n += 1
    if n:
        fsync_dir(Path(root))
    return n
