"""The object store: zstandard-compressed files under objects/ab/cdef…, named by id."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import zstandard

from ..errors import CorruptObjectError, ObjectNotFoundError, RevisionError
from .faults import crash_point
from .fsutil import atomic_write
from .objects import (
    KINDS,
    MAX_BYTES,
    MAX_RATIO,
    RATIO_FLOOR,
    decode,
    encode,
    is_object_id,
    object_id,
    parse_header,
    verify,
)

#: Bytes of decompressed output read to learn an object's header ("kind size\0").
_HEADER_PEEK = 40


class ObjectStore:
    def __init__(self, root: Path, level: int = 10):
        self.root = Path(root)
        self.level = level

    def path(self, oid: str) -> Path:
        return self.root / oid[:2] / oid[2:]

    def put(self, kind: str, payload: bytes) -> str:
        """Store an object (idempotent) and return its id.

        A file already there is kept only if it is intact: a damaged copy (torn by a
        disk fault, truncated by hand) is replaced by the correct content being written
        now, which is how rebuilding a derived object repairs the store."""
        raw = encode(kind, payload)
        oid = object_id(raw)
        p = self.path(oid)
        if not p.exists() or not self.intact(oid):
            data = zstandard.ZstdCompressor(level=self.level, write_checksum=True).compress(raw)
            atomic_write(p, data, mode=0o444, what=f"object-{kind}")
        return oid

    def put_compressed(self, oid: str, data: bytes, want: str | None = None) -> str:
        """Store an object received in its compressed form (from a remote or a bundle).

        The bytes are decompressed (within the caps for received objects) and checked
        against `oid` and, if given, the kind `want` before anything is written, so a
        corrupt, forged or oversized object never enters the store; returns the kind."""
        kind, _ = check_compressed(oid, data, want)
        p = self.path(oid)
        if not p.exists() or not self.intact(oid):  # a damaged copy is replaced
            atomic_write(p, data, mode=0o444, what=f"object-{kind}")
        return kind

    def put_verified(self, oid: str, data: bytes, kind: str) -> None:
        """Store received bytes the caller has already checked (`check_compressed` and the
        value checks of nmkevc/remote/untrusted.py), without decompressing them again."""
        p = self.path(oid)
        if not p.exists() or not self.intact(oid):
            atomic_write(p, data, mode=0o444, what=f"object-{kind}")

    def read_compressed(self, oid: str) -> bytes:
        """The stored (compressed) bytes of an object, verified against its id."""
        self.read_raw(oid)
        return self.path(oid).read_bytes()

    def intact(self, oid: str) -> bool:
        """The stored file decompresses to bytes whose hash is its id."""
        try:
            self.read_raw(oid)
        except (CorruptObjectError, ObjectNotFoundError):
            return False
        return True

    def exists(self, oid: str) -> bool:
        return is_object_id(oid) and self.path(oid).exists()

    def stored_size(self, oid: str) -> int:
        """Bytes on disk (compressed)."""
        try:
            return self.path(oid).stat().st_size
        except FileNotFoundError:
            raise ObjectNotFoundError(f"object {oid[:12]} not found") from None

    def read_raw(self, oid: str, want: str | None = None) -> bytes:
        """Decompressed canonical bytes, verified against the id (and, given `want`, of that kind)."""
        if not is_object_id(oid):
            raise ObjectNotFoundError(f"{oid!r} is not an object id")
        try:
            data = self.path(oid).read_bytes()
        except FileNotFoundError:
            raise ObjectNotFoundError(f"object {oid[:12]} not found") from None
        except OSError as e:
            raise CorruptObjectError(f"object {oid[:12]} cannot be read ({e.strerror})") from None
        try:
            raw = decompress_object(oid, data, want=want)
        except CorruptObjectError as e:  # a local object: say how to find out more
            raise CorruptObjectError(f"{e}; run 'nmkevc fsck'") from None
        verify(raw, oid)
        kind = parse_header(raw, oid)[0]
        if want is not None and kind != want:
            raise CorruptObjectError(f"object {oid[:12]} is a {kind}, expected a {want}")
        return raw

    def get(self, oid: str, kind: str | None = None) -> bytes:
        """The payload of an object, checked for integrity and (optionally) kind."""
        return decode(self.read_raw(oid, want=kind))[1]

    def kind(self, oid: str) -> str:
        return parse_header(self.read_raw(oid))[0]

    def __iter__(self) -> Iterator[str]:
        if not self.root.exists():
            return
        for sub in sorted(self.root.iterdir()):
            if len(sub.name) != 2 or not sub.is_dir():
                continue
            for f in sorted(sub.iterdir()):
                oid = sub.name + f.name
                if is_object_id(oid):
                    yield oid

    def resolve_prefix(self, prefix: str) -> list[str]:
        prefix = prefix.lower()
        if len(prefix) < 2:
            raise RevisionError("an object id prefix needs at least 4 hex digits")
        sub = self.root / prefix[:2]
        if not sub.is_dir():
            return []
        return sorted(sub.name + f.name for f in sub.iterdir() if (sub.name + f.name).startswith(prefix)
                      and is_object_id(sub.name + f.name))

    def delete(self, oid: str) -> None:
        p = self.path(oid)
        try:
            os.chmod(p, 0o644)
            p.unlink()
        except FileNotFoundError:
            return
        crash_point("delete", "object")


def check_compressed(oid: str, data: bytes, want: str | None = None) -> tuple[str, bytes]:
    """(kind, payload) of received object bytes, refused unless they hash to `oid`, are
    of kind `want` (when given) and stay within the caps for untrusted objects."""
    kind, payload = decode(decompress_object(oid, data, want=want, untrusted=True), expected_id=oid)
    if want is not None and kind != want:
        raise CorruptObjectError(f"object {oid[:12]} is a {kind}, expected a {want}")
    return kind, payload


def _corrupt(oid: str, why: str) -> CorruptObjectError:
    return CorruptObjectError(f"object {oid[:12]} is corrupt ({why})")


def frame_size(oid: str, data: bytes) -> int:
    """The canonical size an object file's frame header declares (nothing is decompressed)."""
    try:
        declared = zstandard.get_frame_parameters(data).content_size
    except zstandard.ZstdError:
        raise _corrupt(oid, "cannot decompress") from None
    if declared == zstandard.CONTENTSIZE_UNKNOWN:
        raise _corrupt(oid, "its frame does not declare its size")
    return declared


def peek_header(oid: str, data: bytes) -> tuple[str, int, int]:
    """(kind, payload size, declared canonical size) read from an object file's frame
    header and the first bytes of its output, without decompressing the rest."""
    def corrupt(why: str) -> CorruptObjectError:
        return _corrupt(oid, why)

    declared = frame_size(oid, data)
    try:
        head = zstandard.ZstdDecompressor().stream_reader(data).read(_HEADER_PEEK)
    except zstandard.ZstdError:
        raise corrupt("cannot decompress") from None
    head, sep, _ = head.partition(b"\0")
    kind_b, _, size_b = head.partition(b" ")
    kind = kind_b.decode("ascii", "replace")
    if not sep or kind not in KINDS or not size_b.isdigit() or len(size_b) > 20:
        raise corrupt("no valid header")
    size = int(size_b)
    if len(head) + 1 + size != declared:
        raise corrupt("its header and its frame disagree on its size")
    return kind, size, declared


def decompress_object(oid: str, data: bytes, want: str | None = None, untrusted: bool = False) -> bytes:
    """The canonical bytes inside an object file (not yet checked against oid).

    The size is known before anything is allocated: the frame must declare it, and it must
    be within the kind's cap (and, for an untrusted object, a plausible compression ratio).
    Given the kind wanted, its cap applies and the caller checks the kind on the output
    (after the hash): peeking at the header first would cost a block's decompression (half
    of a delta's) and bound nothing more. With none wanted, the header is peeked at for the
    kind, and must agree with the frame on the size."""
    if want is None:
        kind, _, declared = peek_header(oid, data)
    else:
        kind, declared = want, frame_size(oid, data)
    if declared > MAX_BYTES[kind]:
        raise CorruptObjectError(f"object {oid[:12]} is refused: a {kind} of {declared} bytes "
                                 f"exceeds the limit of {MAX_BYTES[kind]}")
    if untrusted and declared > RATIO_FLOOR and declared > MAX_RATIO * len(data):
        raise CorruptObjectError(f"object {oid[:12]} is refused: {len(data)} bytes claim to expand "
                                 f"to {declared} (a decompression bomb?)")
    try:
        raw = zstandard.ZstdDecompressor().decompress(data, max_output_size=declared,
                                                      allow_extra_data=False)
    except zstandard.ZstdError:
        raise CorruptObjectError(f"object {oid[:12]} is corrupt (cannot decompress)") from None
    except MemoryError:
        raise CorruptObjectError(f"object {oid[:12]} is too large to decompress here "
                                 f"({declared} bytes)") from None
    if len(raw) != declared:
        raise CorruptObjectError(f"object {oid[:12]} is corrupt (truncated)")
    return raw
