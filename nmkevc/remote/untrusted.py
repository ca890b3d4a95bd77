"""Checks on objects received from a peer (a remote or a bundle) before they are stored.

A peer may be careless or hostile, and an object that hashes to its id is still only
bytes someone chose. So each one is decompressed within caps (storage/store.py), parsed
as the one kind the history expects of its id, and its values checked: a commit's fields
have the types and ranges every verb relies on, a delta's numbers are finite and its
shapes agree with each other and with its base, a manifest lists tensors with integer
shapes. Only then is it stored, so nothing a transfer keeps can make fsck, log, show or a
checkout fail later. fsck runs the same value checks on what is already stored.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from ..errors import CorruptObjectError, NmkevcError
from ..history.commit import KINDS as COMMIT_KINDS
from ..history.commit import Commit
from ..storage.objects import BASE_KIND, BLOB_KIND, COMMIT_KIND, DELTA_KIND, STATS_KIND, is_object_id
from ..storage.store import check_compressed

if TYPE_CHECKING:
    from ..bases import BaseManifest
    from ..deltas.delta import Delta

#: No weight of any model has a side this long; larger claims are forgeries.
MAX_DIM = 1 << 24
#: Generous bounds on a commit's record: what log, show and replay read without a care.
MAX_TEXT = 1 << 20
MAX_LINKS = 1 << 16  # parents and cancelled commits (a merge keeping one side may cancel many)
MAX_TIME = 1 << 40  # seconds: beyond the year 36000, where time.localtime gives up


class ExpectedKinds:
    """One expected kind per object id for a whole transfer: an id the history names as
    a delta in one place and as a base (or commit) in another is refused, never
    resolved by whichever role was seen last."""

    def __init__(self, peer: str):
        self.peer = peer
        self.kinds: dict[str, str] = {}

    def want(self, oid: str, kind: str, why: str = "") -> None:
        if not isinstance(oid, str) or not is_object_id(oid):
            raise CorruptObjectError(f"{self.peer} names an invalid object id {str(oid)[:20]!r}")
        have = self.kinds.setdefault(oid, kind)
        if have != kind:
            raise CorruptObjectError(f"{self.peer}: object {oid[:12]} is named both as a {have} and as a "
                                     f"{kind}{' (' + why + ')' if why else ''}; refusing the transfer")

    def __getitem__(self, oid: str) -> str:
        return self.kinds[oid]

    def __contains__(self, oid: object) -> bool:
        return oid in self.kinds


def _bad(oid: str, what: str, why: str) -> CorruptObjectError:
    return CorruptObjectError(f"{what} {oid[:12]} is refused: {why}")


def _text(v: Any) -> bool:
    return isinstance(v, str) and len(v) <= MAX_TEXT


def _ids(v: Any) -> bool:
    return isinstance(v, list) and len(v) <= MAX_LINKS and all(isinstance(x, str) and is_object_id(x) for x in v)


def check_commit_payload(payload: bytes, oid: str) -> Commit:
    """A commit record whose every field has the type and range the verbs rely on."""
    try:
        d = json.loads(payload)
    except (ValueError, RecursionError):
        raise _bad(oid, COMMIT_KIND, "not JSON") from None
    if not isinstance(d, dict):
        raise _bad(oid, COMMIT_KIND, "not a JSON object")
    problems = {
        "kind": d.get("kind") in COMMIT_KINDS,
        "parents": _ids(d.get("parents")),
        "base": isinstance(d.get("base"), str) and is_object_id(d["base"]),
        "message": _text(d.get("message")),
        "author": _text(d.get("author")),
        "time": type(d.get("time")) is int and 0 <= d["time"] <= MAX_TIME,
        "delta": d.get("delta") is None or (isinstance(d["delta"], str) and is_object_id(d["delta"])),
        "cancels": _ids(d.get("cancels", [])),
        "requests": isinstance(d.get("requests", []), list)
        and all(_request_ok(r) for r in d.get("requests", [])),
        "method": d.get("method") is None or isinstance(d["method"], dict),
        "info": isinstance(d.get("info", {}), dict),
    }
    wrong = [k for k, ok in problems.items() if not ok]
    if wrong:
        raise _bad(oid, COMMIT_KIND, f"field {wrong[0]!r} is missing or of the wrong type")
    c = Commit.from_bytes(payload, oid)
    if oid in c.parents or oid in c.cancels or c.delta == c.base or c.base in c.parents:
        raise _bad(oid, COMMIT_KIND, "it names one object in two roles")
    return c


def _request_ok(r: Any) -> bool:
    if not isinstance(r, dict):
        return False
    if not all(_text(r.get(k)) for k in ("subject", "prompt", "target_new")):
        return False
    if r.get("target_true") is not None and not _text(r["target_true"]):
        return False
    return all(isinstance(r.get(k, []), list) and all(_text(x) for x in r.get(k, []))
               for k in ("paraphrases", "neighborhood"))


def check_delta_values(delta: Delta, oid: str) -> None:
    """Finite float32 factors, int64 indices, sides within MAX_DIM (shapes were checked
    against each other when the delta was built)."""
    import torch

    for w in delta.weights:
        if not (0 < w.d_model <= MAX_DIM and 0 < w.d_ff <= MAX_DIM and 0 <= w.layer <= MAX_DIM):
            raise _bad(oid, DELTA_KIND, f"{w.name} claims a {w.d_model} x {w.d_ff} weight")
        if w.idx.dtype != torch.int64:
            raise _bad(oid, DELTA_KIND, f"{w.name}'s neuron indices are not int64")
        for name, t in (("U", w.U), ("V", w.V), ("K", w.K)):
            if t is None:
                continue
            if t.dtype != torch.float32:
                raise _bad(oid, DELTA_KIND, f"{w.name}/{name} is {t.dtype}, not float32")
            if not bool(torch.isfinite(t).all()):
                raise _bad(oid, DELTA_KIND, f"{w.name}/{name} holds NaN or infinite values")


def check_delta_payload(payload: bytes, oid: str) -> Delta:
    from ..deltas.delta import Delta

    d = Delta.from_bytes(payload, oid)
    check_delta_values(d, oid)
    return d


def check_manifest_payload(payload: bytes, oid: str) -> BaseManifest:
    """A manifest whose tensor list every loader can read (names to dtype, shape, hash)."""
    from ..bases import BaseManifest

    try:
        d = json.loads(payload)
        m = BaseManifest.from_bytes(payload)
    except (ValueError, KeyError, TypeError, RecursionError):
        raise _bad(oid, "base manifest", "not a valid manifest") from None
    ok = (isinstance(d, dict) and isinstance(m.config, dict) and isinstance(m.tensors, dict)
          and isinstance(m.architecture, str) and isinstance(m.tokenizer_sha256, str)
          and all(isinstance(t, dict) and isinstance(t.get("dtype"), str) and isinstance(t.get("sha256"), str)
                  and isinstance(t.get("shape"), list)
                  and all(type(s) is int and 0 <= s <= MAX_DIM * 64 for s in t["shape"])
                  for t in m.tensors.values()))
    if not ok:
        raise _bad(oid, "base manifest", "its tensor list is malformed")
    return m


def check_blob_payload(payload: bytes, oid: str) -> None:
    """Context templates: JSON with a list of strings."""
    try:
        d = json.loads(payload)
    except (ValueError, RecursionError):
        raise _bad(oid, BLOB_KIND, "not JSON") from None
    t = d.get("templates") if isinstance(d, dict) else None
    if not (isinstance(t, list) and all(_text(x) for x in t)):
        raise _bad(oid, BLOB_KIND, "not a list of context templates")


def check_stats_payload(payload: bytes, oid: str) -> None:
    """Statistics: safetensors of finite float tensors."""
    import torch

    from .. import tensorio

    try:
        tensors, _ = tensorio.loads(payload)
    except Exception:  # any malformed payload is a refusal, never a crash
        raise _bad(oid, STATS_KIND, "not a valid tensor file") from None
    for name, t in tensors.items():
        if not t.is_floating_point() or not bool(torch.isfinite(t).all()):
            raise _bad(oid, STATS_KIND, f"{name[:40]} is not finite floats")


def check_received(oid: str, data: bytes, want: str) -> tuple[bytes, object]:
    """(payload, parsed object) of received bytes, refused unless they hash to `oid`, are
    the kind `want`, fit the caps and pass the value checks of that kind."""
    kind, payload = check_compressed(oid, data, want)
    try:
        if kind == COMMIT_KIND:
            return payload, check_commit_payload(payload, oid)
        if kind == DELTA_KIND:
            return payload, check_delta_payload(payload, oid)
        if kind == BASE_KIND:
            return payload, check_manifest_payload(payload, oid)
        if kind == BLOB_KIND:
            check_blob_payload(payload, oid)
        elif kind == STATS_KIND:
            check_stats_payload(payload, oid)
    except NmkevcError:
        raise
    except (MemoryError, RecursionError, OverflowError):
        raise _bad(oid, kind, "it cannot be parsed within this machine's limits") from None
    return payload, None


def check_delta_fits(delta: Delta, manifest: BaseManifest, oid: str) -> None:
    """Every weight a delta names exists in its base with the delta's shape."""
    from ..models.adapters import adapter_for

    try:
        adapter = adapter_for(manifest.config)
    except NmkevcError as e:
        raise _bad(oid, DELTA_KIND, f"its base cannot be read ({e})") from None
    for w in delta.weights:
        t = next((manifest.tensors[n] for n in adapter.checkpoint_names(w.name) if n in manifest.tensors), None)
        if t is None:
            raise _bad(oid, DELTA_KIND, f"it names weight {w.name[:60]!r}, which its base does not have")
        if tuple(t["shape"]) != w.shape:
            raise _bad(oid, DELTA_KIND, f"{w.name} has shape {w.shape}, the base weight is {tuple(t['shape'])}")
