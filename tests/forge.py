"""Test-only: objects, bundles and remotes a hostile peer could hand over.

Each forged object hashes correctly to its id (the id is computed here), so only the
checks beyond the hash (kind, caps, values) can refuse it.
"""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

import torch
import zstandard

from nmkevc.deltas.delta import Delta, WeightDelta
from nmkevc.history.commit import Commit
from nmkevc.storage.objects import canonical_json, encode, object_id


def obj(kind: str, payload: bytes) -> tuple[str, bytes]:
    """(id, compressed bytes) of an object, exactly as a store keeps it."""
    raw = encode(kind, payload)
    return object_id(raw), zstandard.ZstdCompressor(level=3, write_checksum=True).compress(raw)


def commit_payload(on_base: str, on_parents: list[str], **fields) -> bytes:
    """A commit record; `fields` override any field (with any JSON value, well typed or not)."""
    c = Commit(kind="edit", parents=tuple(on_parents), base=on_base, message="forged", author="mallory",
               time=1_700_000_000)
    d = json.loads(c.to_bytes())
    d.update(fields)
    return json.dumps(d).encode()


def delta_payload(weight: str, layer: int, orientation: str, d_model: int, d_ff: int,
                  fill: float | None = None) -> bytes:
    """A two-neuron rank-1 delta on one weight; `fill` sets every factor value (NaN, inf...)."""
    idx = torch.tensor([0, 1], dtype=torch.int64)
    U = torch.full((2, 1), 0.01) if fill is None else torch.full((2, 1), fill)
    V = torch.full((d_model, 1), 0.01)
    w = WeightDelta(weight, layer, orientation, d_model, d_ff, idx, U, V, None, {})
    return Delta((w,), {}).to_bytes()


def bomb_frame(kind: str, declared: int) -> bytes:
    """A tiny zstd frame whose header claims `declared` bytes of content (never delivered)."""
    head = f"{kind} {declared - len(kind) - 2 - len(str(declared))}\0".encode()
    # frame: magic, descriptor (8-byte content size, window descriptor present), window 1 MiB,
    # content size, then one raw last block holding only the object's header
    block = struct.pack("<I", len(head) << 3)[:3]  # not the last block: the rest "follows"
    return struct.pack("<I", 0xFD2FB528) + bytes([0xC0, 0x50]) + struct.pack("<Q", declared) + block + head


def write_bundle(path: Path, refs: dict[str, str], objects: dict[str, bytes], head: str | None = "main",
                 bases: dict | None = None, manifest: object = None,
                 compression: int = zipfile.ZIP_STORED) -> Path:
    """A bundle file with exactly these refs and object entries (or this raw manifest)."""
    m = manifest if manifest is not None else {
        "format": "nmkevc-bundle", "version": 1, "refs": refs, "head": head,
        "bases": bases or {}, "objects": sorted(objects)}
    with zipfile.ZipFile(path, "w", compression=compression) as z:
        z.writestr("nmkevc-bundle.json", json.dumps(m) if not isinstance(m, bytes) else m)
        for oid, data in objects.items():
            z.writestr(f"objects/{oid[:2]}/{oid[2:]}", data)
    return path


def history_objects(repo) -> dict[str, bytes]:
    """Every object of a repository's store, compressed (to copy into a forged bundle)."""
    return {oid: repo.store.read_compressed(oid) for oid in repo.store}


def canonical(d: dict) -> bytes:
    return canonical_json(d)
