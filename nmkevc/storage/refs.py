"""Refs: branches, tags and HEAD (attached or detached), with a reflog.

Every ref is one small file replaced atomically; the reflog is append-only JSON
lines, and a torn last line (crash mid-append) is skipped when read.

Every ref name is checked here, at the one place names become paths, with git's
check-ref-format rules, so no name can leave its namespace (`../heads/main` as a tag,
`../../HEAD` as a branch) whichever verb passes it in.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import RefError
from .faults import crash_point
from .fsutil import atomic_write_text, fsync_dir
from .objects import is_object_id

HEADS = "refs/heads/"
TAGS = "refs/tags/"

#: Longest name component in UTF-8 bytes: NAME_MAX (255) less room for a temp file's
#: prefix and suffix (".<name>.XXXXXXXX.tmp") and the reflog's own path.
MAX_COMPONENT_BYTES = 200
#: Longest whole ref name in bytes (well under PATH_MAX with the repository path in front).
MAX_REF_BYTES = 1000
_FORBIDDEN_CHARS = set(" ~^:?*[\\\x7f")


def ref_name_problem(name: str) -> str | None:
    """Why `name` is not a valid ref name under git's check-ref-format rules, or None."""
    if not name:
        return "it is empty"
    if name == "@":
        return "'@' alone is reserved"
    if name.startswith("-"):
        return "it starts with '-'"
    if name.startswith("/") or name.endswith("/"):
        return "it starts or ends with '/'"
    if "//" in name:
        return "it contains '//'"
    if ".." in name:
        return "it contains '..'"
    if "@{" in name:
        return "it contains '@{'"
    if name.endswith("."):
        return "it ends with '.'"
    bad = sorted({c for c in name if ord(c) < 0x20 or c in _FORBIDDEN_CHARS})
    if bad:
        return f"it contains {', '.join(repr(c) for c in bad)}"
    if len(name.encode("utf-8")) > MAX_REF_BYTES:
        return f"it is longer than {MAX_REF_BYTES} bytes"
    for part in name.split("/"):
        if part.startswith("."):
            return f"component {part[:40]!r} starts with '.'"
        if part.endswith(".lock"):
            return f"component {part[:40]!r} ends with '.lock'"
        if len(part.encode("utf-8")) > MAX_COMPONENT_BYTES:
            return f"a component is longer than {MAX_COMPONENT_BYTES} bytes"
    return None


def is_valid_ref_name(name: str) -> bool:
    return ref_name_problem(name) is None


def check_ref_name(name: str, what: str = "branch") -> str:
    """A branch or tag short name, refused (one line) unless git would accept it."""
    problem = ref_name_problem(name)
    if problem is None and name == "HEAD":
        problem = "HEAD is reserved"
    if problem:
        raise RefError(f"{_show(name)} is not a valid {what} name: {problem}")
    return name


def _show(name: str) -> str:
    return repr(name if len(name) <= 60 else name[:57] + "...")


def _check_full_ref(ref: str) -> str:
    """A full ref (`HEAD` or `refs/<namespace>/<name>`), checked before it becomes a path."""
    if ref == "HEAD":
        return ref
    problem = ref_name_problem(ref)
    if problem is None and (not ref.startswith("refs/") or ref.count("/") < 2):
        problem = "it is not under refs/<namespace>/"
    if problem:
        raise RefError(f"invalid ref {_show(ref)}: {problem}")
    return ref


def _kind(ref: str) -> str:
    return "branch" if ref.startswith(HEADS) else "tag" if ref.startswith(TAGS) else "ref"


def _short(ref: str) -> str:
    for prefix in (HEADS, TAGS):
        if ref.startswith(prefix):
            return ref[len(prefix):]
    return ref


@dataclass(frozen=True)
class Head:
    """HEAD: attached to a branch (`branch` set) or detached at `commit`."""

    branch: str | None
    commit: str | None


@dataclass(frozen=True)
class ReflogEntry:
    old: str | None
    new: str | None
    time: float
    message: str


class RefStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        #: refs found corrupt while listing: {ref: problem} (skipped, so one bad file
        #: breaks nothing else; the CLI reports them after the command)
        self.broken: dict[str, str] = {}

    # -- plain refs ------------------------------------------------------------------
    def _path(self, ref: str) -> Path:
        return self.root / _check_full_ref(ref)

    def read(self, ref: str) -> str | None:
        try:
            text = self._path(ref).read_text("utf-8").strip()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        except UnicodeDecodeError:
            text = "<binary>"
        if not is_object_id(text):
            raise RefError(f"ref {ref} is corrupt (content {text[:20]!r}); run 'nmkevc fsck'")
        return text

    def exists(self, ref: str) -> bool:
        """A ref file is there (valid or not)."""
        return self._path(ref).is_file()

    def _check_hierarchy(self, ref: str) -> None:
        """Refuse `a/b` when `a` exists and `a` when `a/b` exists (one name, file or directory)."""
        path = self._path(ref)
        top = self.root / "refs"
        for parent in path.parents:
            if parent == top or top not in parent.parents:
                break
            if parent.is_file():
                other = parent.relative_to(self.root).as_posix()
                raise RefError(f"cannot create {_kind(ref)} {_short(ref)!r}: "
                               f"{_kind(other)} {_short(other)!r} exists")
        if path.is_dir():
            inside = sorted(p for p in path.rglob("*") if p.is_file())
            if inside:
                other = inside[0].relative_to(self.root).as_posix()
                raise RefError(f"cannot create {_kind(ref)} {_short(ref)!r}: "
                               f"{_kind(other)} {_short(other)!r} exists")
            _remove_empty_tree(path)

    def set(self, ref: str, oid: str, message: str) -> None:
        if not is_object_id(oid):
            raise RefError(f"refusing to point {ref} at {oid!r}")
        try:
            old = self.read(ref)
        except RefError:
            old = None  # a corrupt ref is overwritten (its reflog keeps what it was)
        if old is None:
            self._check_hierarchy(ref)
        atomic_write_text(self._path(ref), oid + "\n", what="ref")
        self._log(ref, old, oid, message)

    def delete(self, ref: str, message: str = "delete") -> str | None:
        """Remove a ref and its reflog (git's way, so the name can be reused as a
        directory); returns the id it held, which the HEAD reflog keeps if it was checked out."""
        p = self._path(ref)
        try:
            old = self.read(ref)
        except RefError:
            old = None  # a corrupt ref may always be deleted
        try:
            p.unlink()
        except FileNotFoundError:
            return None
        fsync_dir(p.parent)
        crash_point("delete", _kind(ref))
        self._prune_empty(p.parent, self.root / "refs")
        log = self._log_path(ref)
        with contextlib.suppress(FileNotFoundError):
            log.unlink()
            self._prune_empty(log.parent, self.root / "logs")
        return old

    def _prune_empty(self, d: Path, stop: Path) -> None:
        """Remove directories left empty by a delete, up to (not including) a namespace."""
        while d != stop and stop in d.parents and d.parent != stop:
            try:
                d.rmdir()
            except OSError:
                return
            d = d.parent

    def list(self, prefix: str) -> dict[str, str]:
        """{short name: commit id} for refs under prefix (e.g. HEADS). Corrupt or
        badly named files are skipped and recorded in `self.broken`."""
        good, bad = self.scan(prefix)
        self.broken.update(bad)
        return good

    def scan(self, prefix: str) -> tuple[dict[str, str], dict[str, str]]:
        """({short name: id} of good refs, {full ref: problem} of bad ones) under prefix."""
        base = self.root / prefix
        good: dict[str, str] = {}
        bad: dict[str, str] = {}
        if not base.is_dir():
            return good, bad
        for p in sorted(base.rglob("*")):
            if not p.is_file() or p.name.startswith("."):
                continue  # temp files of an interrupted write are gc's business
            name = p.relative_to(base).as_posix()
            full = prefix + name
            problem = ref_name_problem(full)
            if problem:
                bad[full] = f"ref {full!r} has an invalid name ({problem})"
                continue
            try:
                oid = self.read(full)
            except RefError as e:
                bad[full] = str(e)
                continue
            if oid:
                good[name] = oid
        return good, bad

    # -- HEAD ------------------------------------------------------------------------
    def head(self) -> Head:
        try:
            text = (self.root / "HEAD").read_text("utf-8").strip()
        except FileNotFoundError:
            raise RefError("HEAD is missing; run 'nmkevc fsck'") from None
        except UnicodeDecodeError:
            raise RefError("HEAD is corrupt; run 'nmkevc fsck'") from None
        if text.startswith("ref: "):
            ref = text[5:]
            if not ref.startswith(HEADS) or not is_valid_ref_name(ref):
                raise RefError(f"HEAD points at {ref[:60]!r}, which is not a branch")
            return Head(branch=ref[len(HEADS):], commit=self.read(ref))
        if is_object_id(text):
            return Head(branch=None, commit=text)
        raise RefError("HEAD is corrupt; run 'nmkevc fsck'")

    def _old_head(self) -> str | None:
        """What HEAD resolves to now, for the reflog; None when it is missing or damaged
        (so that fsck --repair can rewrite a corrupt HEAD)."""
        try:
            return self.head().commit
        except RefError:
            return None

    def set_head_branch(self, branch: str, message: str) -> None:
        check_ref_name(branch)
        old = self._old_head()
        atomic_write_text(self.root / "HEAD", f"ref: {HEADS}{branch}\n", what="head")
        self._log("HEAD", old, self.read(HEADS + branch), message)

    def set_head_detached(self, oid: str, message: str) -> None:
        if not is_object_id(oid):
            raise RefError(f"refusing to point HEAD at {oid!r}")
        old = self._old_head()
        atomic_write_text(self.root / "HEAD", oid + "\n", what="head")
        self._log("HEAD", old, oid, message)

    def update_head(self, oid: str, message: str) -> None:
        """Move whatever HEAD stands for (its branch, or HEAD itself when detached)."""
        head = self.head()
        if head.branch is not None:
            self.set(HEADS + head.branch, oid, message)
            self._log("HEAD", head.commit, oid, message)
        else:
            self.set_head_detached(oid, message)

    # -- reflog ----------------------------------------------------------------------
    def _log_path(self, ref: str) -> Path:
        return self.root / "logs" / _check_full_ref(ref)

    def _log(self, ref: str, old: str | None, new: str | None, message: str) -> None:
        crash_point("reflog", _kind(ref))
        p = self._log_path(ref)
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            return  # a stale log of a deleted ref sits where a directory must go: the ref moved; skip the log
        line = json.dumps({"old": old, "new": new, "time": time.time(), "message": message})
        try:  # never through a symlink: the reflog would be appended to a file outside
            fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except (IsADirectoryError, OSError) as e:
            if isinstance(e, IsADirectoryError) or e.errno == errno.ELOOP:
                return
            raise
        with os.fdopen(fd, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def reflog(self, ref: str = "HEAD") -> list[ReflogEntry]:
        p = self._log_path(ref)
        try:
            text = p.read_text("utf-8", errors="replace")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return []
        out = []
        for line in text.splitlines():
            try:
                d = json.loads(line)
                out.append(ReflogEntry(d["old"], d["new"], float(d["time"]), str(d["message"])))
            except (ValueError, KeyError, TypeError):
                continue  # a torn line from a crash mid-append
        return out


def _remove_empty_tree(path: Path) -> None:
    """Remove a directory that holds only empty directories (left by deleted refs)."""
    for d in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):
            d.rmdir()
    with contextlib.suppress(OSError):
        path.rmdir()
