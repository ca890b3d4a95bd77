"""The commit record and its canonical JSON form."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..errors import CorruptObjectError
from ..facts import EditRequest
from ..storage.objects import canonical_json

FORMAT = 1

#: What a commit does to the effective set; informative, the maths reads only
#: `delta` and `cancels`.
KINDS = ("init", "edit", "revert", "merge", "cherry-pick", "replay")


@dataclass(frozen=True)
class Commit:
    """One node of the history.

    `delta` adds a factored neuron delta; `cancels` drops earlier commits from the
    effective set (revert, or a merge that keeps one side of a conflict). Everything
    else (requests, method, evaluation, mask sizes) is record for people and for replay.
    """

    kind: str
    parents: tuple[str, ...]
    base: str
    message: str
    author: str
    time: int
    delta: str | None = None
    cancels: tuple[str, ...] = ()
    requests: tuple[dict, ...] = ()
    method: dict | None = None
    info: dict = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        return canonical_json(
            {
                "format": FORMAT,
                "kind": self.kind,
                "parents": list(self.parents),
                "base": self.base,
                "message": self.message,
                "author": self.author,
                "time": self.time,
                "delta": self.delta,
                "cancels": list(self.cancels),
                "requests": list(self.requests),
                "method": self.method,
                "info": self.info,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes, oid: str = "?") -> Commit:
        try:
            d: dict[str, Any] = json.loads(data)
            return cls(
                kind=d["kind"],
                parents=tuple(d["parents"]),
                base=d["base"],
                message=d["message"],
                author=d["author"],
                time=int(d["time"]),
                delta=d.get("delta"),
                cancels=tuple(d.get("cancels", ())),
                requests=tuple(d.get("requests", ())),
                method=d.get("method"),
                info=d.get("info") or {},
            )
        except (ValueError, KeyError, TypeError):
            raise CorruptObjectError(f"commit {oid[:12]} is not a valid commit record") from None

    @property
    def summary(self) -> str:
        return self.message.splitlines()[0] if self.message else ""

    def edit_requests(self) -> list[EditRequest]:
        return [EditRequest.from_json(r) for r in self.requests]
