"""Verbs that add a commit on HEAD: commit a delta, revert, cherry-pick."""

from __future__ import annotations

import time

from ..deltas.delta import Delta
from ..errors import BaseMismatchError, NmkevcError
from ..facts import EditRequest
from ..history.commit import Commit
from ..models.adapters import adapter_for
from ..repo.repository import Repo, default_author


def check_delta_against_base(repo: Repo, base_id: str, delta: Delta) -> None:
    """Every weight a delta names must exist in the base with the delta's shape."""
    manifest = repo.manifest(base_id)
    adapter = adapter_for(manifest.config)
    for w in delta.weights:
        t = next((manifest.tensors[n] for n in adapter.checkpoint_names(w.name) if n in manifest.tensors), None)
        if t is None:
            raise BaseMismatchError(f"delta names weight {w.name!r}, which the base does not have")
        if tuple(t["shape"]) != w.shape:
            raise BaseMismatchError(
                f"delta for {w.name} has shape {w.shape}, the base weight is {tuple(t['shape'])}"
            )


def commit_delta(
    repo: Repo,
    delta: Delta,
    message: str,
    requests: list[EditRequest] | tuple[dict, ...] = (),
    method: dict | None = None,
    info: dict | None = None,
    kind: str = "edit",
) -> str:
    """Store a delta and commit it on HEAD (the low-level step under `edit`)."""
    with repo.writing():
        parent = repo.resolve("HEAD")
        base = repo.commit(parent).base
        check_delta_against_base(repo, base, delta)
        did = repo.put_delta(delta)
        reqs = tuple(r.to_json() if isinstance(r, EditRequest) else dict(r) for r in requests)
        c = Commit(
            kind=kind, parents=(parent,), base=base, message=message, author=default_author(),
            time=int(time.time()), delta=did, requests=reqs, method=method, info=info or {},
        )
        return repo.advance_head(c, f"{kind}: {c.summary}")


def revert(repo: Repo, rev: str, message: str | None = None) -> str:
    """Cancel a commit exactly: it leaves the effective set, nothing is subtracted.

    Reverting a merge cancels everything that merge brought in."""
    with repo.writing():
        head = repo.resolve("HEAD")
        target = repo.resolve(rev)
        active = set(repo.effective(head))
        if target not in active:
            raise NmkevcError(f"{target[:12]} is not in effect at HEAD (not an ancestor, or already reverted)")
        c = repo.commit(target)
        if c.kind == "init":
            raise NmkevcError("cannot revert the initial commit")
        if len(c.parents) > 1:
            brought = set(repo.effective(target)) - set(repo.effective(c.parents[0]))
            cancels = tuple(sorted(x for x in brought if x in active))
        else:
            if c.delta is None and not c.cancels:
                raise NmkevcError(f"{target[:12]} changes nothing; there is nothing to revert")
            cancels = (target,)
        new = Commit(
            kind="revert", parents=(head,), base=c.base,
            message=message or f'Revert "{c.summary}"\n\nThis reverts commit {target}.',
            author=default_author(), time=int(time.time()), cancels=cancels,
            info={"reverted": target},
        )
        return repo.advance_head(new, f"revert: {target[:12]}")


def cherry_pick(repo: Repo, rev: str, message: str | None = None) -> str:
    """Copy a commit's delta (and its facts) onto HEAD."""
    with repo.writing():
        head = repo.resolve("HEAD")
        target = repo.resolve(rev)
        c = repo.commit(target)
        if c.delta is None:
            raise NmkevcError(f"{target[:12]} carries no delta; only edit commits can be cherry-picked")
        if c.base != repo.commit(head).base:
            raise BaseMismatchError(f"{target[:12]} was made on a different base")
        if c.delta in {d for _, d in repo.graph.active_deltas(head)}:
            raise NmkevcError(f"the change of {target[:12]} is already in effect at HEAD")
        info = {k: v for k, v in c.info.items() if k != "cherry_picked_from"}
        info["cherry_picked_from"] = target
        new = Commit(
            kind="cherry-pick", parents=(head,), base=c.base,
            message=message or f"{c.message}\n\n(cherry picked from commit {target})",
            author=default_author(), time=int(time.time()), delta=c.delta,
            requests=c.requests, method=c.method, info=info,
        )
        return repo.advance_head(new, f"cherry-pick: {target[:12]}")
