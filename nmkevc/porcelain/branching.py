"""Branches, tags and moving HEAD."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from ..errors import NmkevcError, RefError
from ..history.commit import Commit
from ..repo.namespaces import ALL_REFS
from ..repo.repository import ReflogEntry, Repo, default_author


@dataclass(frozen=True)
class HeadMove:
    """Where HEAD went: a commit, on `branch` (None = detached); `created` = a new branch."""

    commit: str
    branch: str | None
    created: bool = False

    def to_json(self) -> dict:
        return asdict(self)


def create_branch(repo: Repo, name: str, start: str = "HEAD", force: bool = False) -> str:
    repo.branch_refs.check_name(name)
    with repo.writing():
        if repo.branch_refs.exists(name) and not force:
            raise RefError(f"a branch named {name!r} already exists")
        if repo.tag_refs.is_valid(name) and repo.tag_refs.exists(name) and not force:
            raise RefError(f"a tag named {name!r} exists; a branch of the same name would make "
                           f"{name!r} ambiguous (use --force to create it anyway)")
        oid = repo.resolve(start)
        repo.branch_refs.set(name, oid, f"branch: created from {start}")
        return oid


def delete_branch(repo: Repo, name: str, force: bool = False) -> str | None:
    """Delete a branch; returns the commit it pointed at (None if its ref was corrupt)."""
    repo.branch_refs.check_name(name)
    with repo.writing():
        if not repo.branch_refs.exists(name):
            raise RefError(f"branch {name!r} not found")
        head = repo.head()
        if head.branch == name:
            raise RefError(f"cannot delete branch {name!r}: HEAD is on it")
        try:
            oid = repo.branch_refs.read(name)
        except RefError:
            if not force:
                raise RefError(f"branch {name!r} is corrupt; use -D to delete it anyway") from None
            oid = None
        if not force and oid and head.commit and not repo.graph.is_ancestor(oid, head.commit):
            raise RefError(f"branch {name!r} is not merged into HEAD; use --force to delete it anyway")
        return repo.branch_refs.delete(name, "branch: deleted")


def switch(repo: Repo, target: str, create: bool = False, detach: bool = False) -> str:
    """Move HEAD to a branch (or create one), or detach it at a commit."""
    with repo.writing():
        if create:
            create_branch(repo, target)
        oid = None if detach or not repo.branch_refs.is_valid(target) else repo.branch_refs.read(target)
        if oid is not None:
            repo.refs.set_head_branch(target, f"switch: to {target}")
            return oid
        if not detach and not create:
            try:
                oid = repo.resolve(target)
            except NmkevcError:
                repo.branch_refs.check_name(target)  # a name no branch could have says so
                raise RefError(f"no branch named {target!r} (use -c to create it)") from None
            raise RefError(
                f"{target!r} is not a branch; use --detach to look at commit {oid[:12]} without a branch"
            )
        oid = repo.resolve(target)
        repo.refs.set_head_detached(oid, f"switch: detached at {target}")
        return oid


def switch_orphan(repo: Repo, name: str, base_id: str | None = None, message: str | None = None) -> str:
    """A new branch with its own root commit (optionally on another recorded base)."""
    repo.branch_refs.check_name(name)
    with repo.writing():
        if repo.branch_refs.exists(name):
            raise RefError(f"a branch named {name!r} already exists")
        if repo.tag_refs.is_valid(name) and repo.tag_refs.exists(name):
            raise RefError(f"a tag named {name!r} exists; choose another branch name")
        base = base_id or repo.commit(repo.resolve("HEAD")).base
        repo.manifest(base)
        root = Commit(kind="init", parents=(), base=base, message=message or f"Root of {name}",
                      author=default_author(), time=int(time.time()))
        cid = repo.write_commit(root)
        repo.branch_refs.set(name, cid, "branch: orphan")
        repo.refs.set_head_branch(name, f"switch: to orphan {name}")
        return cid


def create_tag(repo: Repo, name: str, rev: str = "HEAD", force: bool = False) -> str:
    repo.tag_refs.check_name(name)
    with repo.writing():
        if repo.tag_refs.exists(name) and not force:
            raise RefError(f"tag {name!r} already exists")
        oid = repo.resolve(rev)
        repo.tag_refs.set(name, oid, f"tag: {rev}")
        return oid


def delete_tag(repo: Repo, name: str) -> str | None:
    """Delete a tag; returns the commit it pointed at (None if its ref was corrupt)."""
    repo.tag_refs.check_name(name)
    with repo.writing():
        if not repo.tag_refs.exists(name):
            raise RefError(f"tag {name!r} not found")
        return repo.tag_refs.delete(name, "tag: deleted")


def checkout(repo: Repo, target: str, new_branch: str | None = None) -> HeadMove:
    """git's checkout: a branch name switches to it; any other revision detaches HEAD;
    with `new_branch`, a branch is created at `target` and checked out."""
    with repo.writing():
        if new_branch:
            create_branch(repo, new_branch, target)
            return HeadMove(switch(repo, new_branch), new_branch, created=True)
        if repo.branch_refs.is_valid(target) and repo.branch_refs.read(target):
            return HeadMove(switch(repo, target), target)
        return HeadMove(switch(repo, target, detach=True), None)


def reflog(repo: Repo, ref: str = "HEAD", max_count: int | None = None) -> list[ReflogEntry]:
    """Where `ref` (HEAD, a branch name or a full refs/ name) has pointed, newest first."""
    name = ref if ref == "HEAD" or ref.startswith(ALL_REFS) else repo.branch_refs.ref(ref)
    entries = list(reversed(repo.reflog(name)))
    return entries if max_count is None else entries[:max_count]


def tags(repo: Repo) -> dict[str, str]:
    """{tag name: commit id}."""
    return repo.tags()
