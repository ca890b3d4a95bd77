"""Refs: branches, tags and HEAD (attached or detached), with a reflog.

Every ref is one small file replaced atomically; the reflog is append-only JSON
lines, and a torn last line (crash mid-append) is skipped when read.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import RefError
from .fsutil import atomic_write_text, fsync_dir
from .objects import is_object_id

HEADS = "refs/heads/"
TAGS = "refs/tags/"

_BAD_NAME = re.compile(r"(^[-./])|(\.\.)|([\x00-\x20~^:?*\[\\])|(/$)|(\.lock$)|(@\{)|(//)|(\.$)")


def check_ref_name(name: str, what: str = "branch") -> str:
    if not name or _BAD_NAME.search(name) or name == "HEAD":
        raise RefError(f"{name!r} is not a valid {what} name")
    return name


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

    # -- plain refs ------------------------------------------------------------------
    def _path(self, ref: str) -> Path:
        return self.root / ref

    def read(self, ref: str) -> str | None:
        try:
            text = self._path(ref).read_text("utf-8").strip()
        except (FileNotFoundError, IsADirectoryError):
            return None
        if not is_object_id(text):
            raise RefError(f"ref {ref} is corrupt (content {text[:20]!r}); run 'nmkevc fsck'")
        return text

    def set(self, ref: str, oid: str, message: str) -> None:
        if not is_object_id(oid):
            raise RefError(f"refusing to point {ref} at {oid!r}")
        old = self.read(ref)
        atomic_write_text(self._path(ref), oid + "\n")
        self._log(ref, old, oid, message)

    def delete(self, ref: str, message: str = "delete") -> None:
        old = self.read(ref)
        p = self._path(ref)
        try:
            p.unlink()
        except FileNotFoundError:
            return
        fsync_dir(p.parent)
        self._log(ref, old, None, message)

    def list(self, prefix: str) -> dict[str, str]:
        """{short name: commit id} for refs under prefix (e.g. HEADS)."""
        base = self._path(prefix)
        out: dict[str, str] = {}
        if not base.is_dir():
            return out
        for p in sorted(base.rglob("*")):
            if p.is_file() and not p.name.startswith("."):
                name = p.relative_to(base).as_posix()
                oid = self.read(prefix + name)
                if oid:
                    out[name] = oid
        return out

    # -- HEAD ------------------------------------------------------------------------
    def head(self) -> Head:
        try:
            text = (self.root / "HEAD").read_text("utf-8").strip()
        except FileNotFoundError:
            raise RefError("HEAD is missing; run 'nmkevc fsck'") from None
        if text.startswith("ref: "):
            ref = text[5:]
            if not ref.startswith(HEADS):
                raise RefError(f"HEAD points at {ref!r}, which is not a branch")
            return Head(branch=ref[len(HEADS):], commit=self.read(ref))
        if is_object_id(text):
            return Head(branch=None, commit=text)
        raise RefError("HEAD is corrupt; run 'nmkevc fsck'")

    def set_head_branch(self, branch: str, message: str) -> None:
        old = self.head().commit if (self.root / "HEAD").exists() else None
        atomic_write_text(self.root / "HEAD", f"ref: {HEADS}{branch}\n")
        self._log("HEAD", old, self.read(HEADS + branch), message)

    def set_head_detached(self, oid: str, message: str) -> None:
        old = self.head().commit
        atomic_write_text(self.root / "HEAD", oid + "\n")
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
    def _log(self, ref: str, old: str | None, new: str | None, message: str) -> None:
        p = self.root / "logs" / ref
        p.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"old": old, "new": new, "time": time.time(), "message": message})
        with open(p, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def reflog(self, ref: str = "HEAD") -> list[ReflogEntry]:
        p = self.root / "logs" / ref
        if not p.exists():
            return []
        out = []
        for line in p.read_text("utf-8").splitlines():
            try:
                d = json.loads(line)
                out.append(ReflogEntry(d["old"], d["new"], d["time"], d["message"]))
            except (ValueError, KeyError):
                continue  # a torn line from a crash mid-append
        return out
