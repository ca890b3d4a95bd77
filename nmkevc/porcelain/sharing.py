"""Sharing verbs: clone, remote, fetch, pull, push, bundle.

Transfers live in nmkevc/remote/; this module chooses defaults the way git does
(the remote is `origin` or the only one; the branch is the current one) and
composes fetch with the merge verb into pull.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import NmkevcError
from ..remote import bundle, remotes, transfer
from ..remote.bundle import BundleReport
from ..remote.transfer import CloneReport, TransferReport
from ..repo.repository import Repo
from .merging import MergeReport

Progress = Callable[[int, int], None] | None


def default_remote(repo: Repo, name: str | None) -> str:
    """The remote a verb talks to: the one named, else `origin`, else the only one."""
    if name:
        return name
    names = sorted(repo.config.remotes)
    if "origin" in names:
        return "origin"
    if len(names) == 1:
        return names[0]
    if not names:
        raise NmkevcError("no remote configured; add one with 'nmkevc remote add NAME URL'")
    raise NmkevcError(f"several remotes ({', '.join(names)}); name the one to use")


def clone(url: str, directory: str | Path | None = None, origin: str = "origin", with_stats: bool = False,
          progress: Progress = None, parent: str | Path = ".") -> CloneReport:
    """Clone into `directory`, or (None) into a folder of `parent` named after the URL."""
    target = Path(parent) / (directory if directory is not None else default_directory(url))
    return transfer.clone(url, target, origin=origin, with_stats=with_stats, progress=progress)


def default_directory(url: str) -> str:
    """git's habit: the last part of the URL, without a .bundle suffix."""
    name = url.rstrip("/").rsplit("/", 1)[-1]
    for suffix in (".bundle", ".nmkevc"):
        if name.endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
    if not name or name in (".", ".."):
        raise NmkevcError(f"cannot guess a directory name from {url!r}; give one")
    return name


def fetch(repo: Repo, name: str | None = None, with_stats: bool = False, prune: bool = False,
          progress: Progress = None) -> TransferReport:
    return transfer.fetch(repo, default_remote(repo, name), with_stats=with_stats, prune=prune,
                          progress=progress)


def push(repo: Repo, name: str | None = None, refs: list[str] | None = None, force: bool = False,
         with_stats: bool = False, progress: Progress = None) -> TransferReport:
    return transfer.push(repo, default_remote(repo, name), refs=refs, force=force, with_stats=with_stats,
                         progress=progress)


@dataclass
class PullReport:
    fetch: TransferReport
    merge: MergeReport

    def to_json(self) -> dict:
        return {"fetch": self.fetch.to_json(), "merge": self.merge.to_json()}


def pull(repo: Repo, merge: Callable[[str], MergeReport], name: str | None = None,
         branch: str | None = None, with_stats: bool = False, progress: Progress = None) -> PullReport:
    """fetch, then merge the remote's branch (the current branch's name unless given) into HEAD."""
    remote = default_remote(repo, name)
    if branch is None:
        head = repo.head()
        if head.branch is None:
            raise NmkevcError("HEAD is detached; name the remote branch to pull")
        branch = head.branch
    fetched = transfer.fetch(repo, remote, with_stats=with_stats, progress=progress)
    if repo.remote_refs.read(f"{remote}/{branch}") is None:
        raise NmkevcError(f"remote {remote!r} has no branch {branch!r}")
    return PullReport(fetched, merge(f"{remote}/{branch}"))


def add_remote(repo: Repo, name: str, url: str) -> None:
    remotes.add_remote(repo, name, url)


def remove_remote(repo: Repo, name: str) -> None:
    remotes.remove_remote(repo, name)


def list_remotes(repo: Repo) -> dict[str, str]:
    return remotes.list_remotes(repo)


def create_bundle(repo: Repo, path: str | Path, revs: list[str], progress: Progress = None) -> BundleReport:
    return bundle.create_bundle(repo, path, revs, progress=progress)


def verify_bundle(path: str) -> BundleReport:
    return bundle.verify_bundle(path)


__all__ = ["BundleReport", "CloneReport", "PullReport", "TransferReport", "clone", "fetch", "pull", "push"]
