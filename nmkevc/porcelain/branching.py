"""Branches, tags and moving HEAD."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from ..errors import NmkevcError, RefError
from ..history.commit import Commit
from ..repo.repository import Repo, default_author
from ..storage.refs import HEADS, TAGS, ReflogEntry, check_ref_name


@dataclass(frozen=True)
class HeadMove:
    """Where HEAD went: a commit, on `branch` (None = detached); `created` = a new branch."""

    commit: str
    branch: str | None
    created: bool = False

    def to_json(self) -> dict:
        return asdict(self)


def create_branch(repo: Repo, name: str, start: str = "HEAD", force: bool = False) -> str:
    check_ref_name(name)
    with repo.writing():
        if repo.refs.read(HEADS + name) and not force:
            raise RefError(f"a branch named {name!r} already exists")
        oid = repo.resolve(start)
        repo.refs.set(HEADS + name, oid, f"branch: created from {start}")
        return oid


def delete_branch(repo: Repo, name: str, force: bool = False) -> None:
    with repo.writing():
        oid = repo.refs.read(HEADS + name)
        if oid is None:
            raise RefError(f"branch {name!r} not found")
        head = repo.head()
        if head.branch == name:
            raise RefError(f"cannot delete branch {name!r}: HEAD is on it")
        if not force and head.commit and not repo.graph.is_ancestor(oid, head.commit):
            raise RefError(f"branch {name!r} is not merged into HEAD; use --force to delete it anyway")
        repo.refs.delete(HEADS + name, "branch: deleted")


def switch(repo: Repo, target: str, create: bool = False, detach: bool = False) -> str:
    """Move HEAD to a branch (or create one), or detach it at a commit."""
    with repo.writing():
        if create:
            create_branch(repo, target)
        if not detach and repo.refs.read(HEADS + target):
            repo.refs.set_head_branch(target, f"switch: to {target}")
            return repo.refs.read(HEADS + target)  # type: ignore[return-value]
        if not detach and not create:
            try:
                oid = repo.resolve(target)
            except NmkevcError:
                raise RefError(f"no branch named {target!r} (use -c to create it)") from None
            raise RefError(
                f"{target!r} is not a branch; use --detach to look at commit {oid[:12]} without a branch"
            )
        oid = repo.resolve(target)
        repo.refs.set_head_detached(oid, f"switch: detached at {target}")
        return oid


def switch_orphan(repo: Repo, name: str, base_id: str | None = None, message: str | None = None) -> str:
    """A new branch with its own root commit (optionally on another recorded base)."""
    check_ref_name(name)
    with repo.writing():
        if repo.refs.read(HEADS + name):
            raise RefError(f"a branch named {name!r} already exists")
        base = base_id or repo.commit(repo.resolve("HEAD")).base
        repo.manifest(base)
        root = Commit(kind="init", parents=(), base=base, message=message or f"Root of {name}",
                      author=default_author(), time=int(time.time()))
        cid = repo.write_commit(root)
        repo.refs.set(HEADS + name, cid, "branch: orphan")
        repo.refs.set_head_branch(name, f"switch: to orphan {name}")
        return cid


def create_tag(repo: Repo, name: str, rev: str = "HEAD", force: bool = False) -> str:
    check_ref_name(name, "tag")
    with repo.writing():
        if repo.refs.read(TAGS + name) and not force:
            raise RefError(f"tag {name!r} already exists")
        oid = repo.resolve(rev)
        repo.refs.set(TAGS + name, oid, f"tag: {rev}")
        return oid


def delete_tag(repo: Repo, name: str) -> None:
    with repo.writing():
        if repo.refs.read(TAGS + name) is None:
            raise RefError(f"tag {name!r} not found")
        repo.refs.delete(TAGS + name, "tag: deleted")


def checkout(repo: Repo, target: str, new_branch: str | None = None) -> HeadMove:
    """git's checkout: a branch name switches to it; any other revision detaches HEAD;
    with `new_branch`, a branch is created at `target` and checked out."""
    with repo.writing():
        if new_branch:
            create_branch(repo, new_branch, target)
            return HeadMove(switch(repo, new_branch), new_branch, created=True)
        if repo.refs.read(HEADS + target):
            return HeadMove(switch(repo, target), target)
        return HeadMove(switch(repo, target, detach=True), None)


def reflog(repo: Repo, ref: str = "HEAD", max_count: int | None = None) -> list[ReflogEntry]:
    """Where `ref` (HEAD, a branch name or a full refs/ name) has pointed, newest first."""
    name = ref if ref == "HEAD" or ref.startswith("refs/") else HEADS + ref
    entries = list(reversed(repo.refs.reflog(name)))
    return entries if max_count is None else entries[:max_count]


def tags(repo: Repo) -> dict[str, str]:
    """{tag name: commit id}."""
    return repo.refs.list(TAGS)
