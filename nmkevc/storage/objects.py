"""Object encoding: kinds, canonical bytes and identity.

An object's id is the sha256 of `b"<kind> <size>\\0" + payload` (git's shape), so the
kind is part of what is hashed and a delta can never be mistaken for a commit.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from ..errors import CorruptObjectError

#: The object kinds, named once: every layer above uses these names, never the strings.
DELTA_KIND, COMMIT_KIND, BASE_KIND, STATS_KIND, BLOB_KIND = "delta", "commit", "base", "stats", "blob"
KINDS = (DELTA_KIND, COMMIT_KIND, BASE_KIND, STATS_KIND, BLOB_KIND)
ID_HEX_LEN = 64

#: Largest canonical size of each kind that any store decompresses. An object is held in
#: memory whole, so a frame claiming more is refused before a byte is allocated.
MAX_BYTES: dict[str, int] = {
    "commit": 16 << 20,
    "base": 256 << 20,
    "blob": 64 << 20,
    "delta": 4 << 30,
    "stats": 16 << 30,
}
#: Received objects larger than RATIO_FLOOR may not expand more than MAX_RATIO times:
#: big objects are float tensors, which zstandard shrinks by a few percent, so only a
#: decompression bomb exceeds this.
RATIO_FLOOR = 64 << 20
MAX_RATIO = 64


def canonical_json(obj: Any) -> bytes:
    """One byte string per value: sorted keys, no spaces, UTF-8, no NaN."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def encode(kind: str, payload: bytes) -> bytes:
    if kind not in KINDS:
        raise ValueError(f"unknown object kind {kind!r}")
    return kind.encode("ascii") + b" " + str(len(payload)).encode("ascii") + b"\0" + payload


def object_id(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def decode(raw: bytes, expected_id: str | None = None) -> tuple[str, bytes]:
    """Split canonical bytes into (kind, payload), checking size and (optionally) identity."""
    if expected_id is not None:
        verify(raw, expected_id)
    kind, start = parse_header(raw, expected_id)
    return kind, raw[start:]


def verify(raw: bytes, expected_id: str) -> None:
    """Refuse canonical bytes that do not hash to their id."""
    if object_id(raw) != expected_id:
        raise CorruptObjectError(f"object {expected_id[:12]} is corrupt (hash mismatch)")


def parse_header(raw: bytes, expected_id: str | None = None) -> tuple[str, int]:
    """(kind, where the payload starts) of canonical bytes whose header states the payload's
    size; the payload is not copied (a delta's is hundreds of kilobytes, read by the thousand)."""
    end = raw.find(b"\0")
    if end < 0 or b" " not in raw[:end]:
        raise CorruptObjectError(f"object {(expected_id or '?')[:12]} has no valid header")
    kind_b, size_b = raw[:end].split(b" ", 1)
    kind = kind_b.decode("ascii", "replace")
    if kind not in KINDS or not size_b.isdigit() or int(size_b) != len(raw) - end - 1:
        raise CorruptObjectError(f"object {(expected_id or '?')[:12]} has a bad header")
    return kind, end + 1


def is_object_id(text: str) -> bool:
    return len(text) == ID_HEX_LEN and all(c in "0123456789abcdef" for c in text)
