"""The object store: zstandard-compressed files under objects/ab/cdef…, named by id."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import zstandard

from ..errors import CorruptObjectError, ObjectNotFoundError, RevisionError
from .faults import crash_point
from .fsutil import atomic_write
from .objects import decode, encode, is_object_id, object_id


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

    def put_compressed(self, oid: str, data: bytes) -> str:
        """Store an object received in its compressed form (from a remote or a bundle).

        The bytes are decompressed and checked against `oid` before anything is written,
        so a corrupt or forged object never enters the store; returns the object's kind."""
        kind, _ = check_compressed(oid, data)
        p = self.path(oid)
        if not p.exists() or not self.intact(oid):  # a damaged copy is replaced
            atomic_write(p, data, mode=0o444, what=f"object-{kind}")
        return kind

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

    def read_raw(self, oid: str) -> bytes:
        """Decompressed canonical bytes, verified against the id."""
        if not is_object_id(oid):
            raise ObjectNotFoundError(f"{oid!r} is not an object id")
        try:
            data = self.path(oid).read_bytes()
        except FileNotFoundError:
            raise ObjectNotFoundError(f"object {oid[:12]} not found") from None
        except OSError as e:
            raise CorruptObjectError(f"object {oid[:12]} cannot be read ({e.strerror})") from None
        try:
            raw = decompress_object(oid, data)
        except CorruptObjectError as e:  # a local object: say how to find out more
            raise CorruptObjectError(f"{e}; run 'nmkevc fsck'") from None
        decode(raw, expected_id=oid)
        return raw

    def get(self, oid: str, kind: str | None = None) -> bytes:
        """The payload of an object, checked for integrity and (optionally) kind."""
        got_kind, payload = decode(self.read_raw(oid), expected_id=None)
        if kind is not None and got_kind != kind:
            raise CorruptObjectError(f"object {oid[:12]} is a {got_kind}, expected a {kind}")
        return payload

    def kind(self, oid: str) -> str:
        return decode(self.read_raw(oid))[0]

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


def check_compressed(oid: str, data: bytes) -> tuple[str, bytes]:
    """(kind, payload) of an object file's bytes, refused unless they hash to `oid`."""
    return decode(decompress_object(oid, data), expected_id=oid)


def decompress_object(oid: str, data: bytes) -> bytes:
    """The canonical bytes inside a stored object file (not yet checked against oid)."""
    try:
        return zstandard.ZstdDecompressor().decompress(data)
    except zstandard.ZstdError:
        raise CorruptObjectError(f"object {oid[:12]} is corrupt (cannot decompress)") from None
