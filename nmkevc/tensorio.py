"""Safetensors bytes we control: canonical for hashing, streamable for export.

The library's writer is fine for reading back, but object identity hashes the bytes,
so we write the (simple, documented) format ourselves with a sorted header; the
result is a standard safetensors file any reader accepts. Export streams tensors one
at a time so a large model never has to sit in memory twice.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:  # tensors arrive from callers; reading a header needs no torch
    import torch

#: torch dtype name → (safetensors code, bytes per element). Keyed by name so that this
#: module loads without torch (commands that never touch a tensor start faster).
DTYPE_CODES: dict[str, tuple[str, int]] = {
    "float64": ("F64", 8),
    "float32": ("F32", 4),
    "float16": ("F16", 2),
    "bfloat16": ("BF16", 2),
    "int64": ("I64", 8),
    "int32": ("I32", 4),
    "int16": ("I16", 2),
    "int8": ("I8", 1),
    "uint8": ("U8", 1),
    "bool": ("BOOL", 1),
}


def dtype_name(dtype: torch.dtype) -> str:
    """"float32" for torch.float32."""
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n * DTYPE_CODES[dtype_name(self.dtype)][1]


def _header(specs: list[TensorSpec], metadata: dict[str, str] | None) -> bytes:
    header: dict[str, object] = {}
    offset = 0
    for spec in specs:
        if dtype_name(spec.dtype) not in DTYPE_CODES:
            raise ValueError(f"unsupported dtype {spec.dtype} for tensor {spec.name}")
        header[spec.name] = {
            "dtype": DTYPE_CODES[dtype_name(spec.dtype)][0],
            "shape": list(spec.shape),
            "data_offsets": [offset, offset + spec.nbytes],
        }
        offset += spec.nbytes
    if metadata:
        header["__metadata__"] = dict(sorted(metadata.items()))
    raw = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # align the data section to 8 bytes
    return struct.pack("<Q", len(raw)) + raw


def tensor_buffer(t: torch.Tensor):
    """The tensor's bytes as a buffer (no copy for a contiguous CPU tensor): what a file
    write takes directly, where `tensor_bytes` would copy 500 MB once more on export."""
    import torch  # loaded already: t is a tensor

    t = t.detach().contiguous().cpu()
    if t.numel() == 0:
        return b""
    # flatten: a size-1 dimension may carry any stride and still count as contiguous
    return t.reshape(-1).view(torch.uint8).numpy()


def tensor_bytes(t: torch.Tensor) -> bytes:
    buf = tensor_buffer(t)
    return buf if isinstance(buf, bytes) else buf.tobytes()


def dumps(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """Canonical safetensors bytes: tensors in name order, sorted JSON header."""
    names = sorted(tensors)
    specs = [TensorSpec(n, tensors[n].dtype, tuple(tensors[n].shape)) for n in names]
    parts = [_header(specs, metadata)]
    parts.extend(tensor_bytes(tensors[n]) for n in names)
    return b"".join(parts)


def loads(data: bytes) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read safetensors bytes (ours or anyone's) into tensors and metadata."""
    from safetensors.torch import load

    if len(data) < 8:
        raise ValueError("truncated safetensors payload")
    (n,) = struct.unpack("<Q", data[:8])
    if 8 + n > len(data):
        raise ValueError("truncated safetensors header")
    header = json.loads(data[8 : 8 + n])
    metadata = header.get("__metadata__") or {}
    return load(data), metadata


def write_streaming(
    fh: BinaryIO,
    specs: list[TensorSpec],
    produce: Callable[[TensorSpec], torch.Tensor],
    metadata: dict[str, str] | None = None,
    on_tensor: Callable[[TensorSpec], None] | None = None,
) -> None:
    """Write a safetensors file tensor by tensor; `produce` returns each tensor when asked."""
    fh.write(_header(specs, metadata))
    for spec in specs:
        t = produce(spec)
        if t.dtype != spec.dtype or tuple(t.shape) != spec.shape:
            raise ValueError(f"tensor {spec.name} does not match its declared dtype/shape")
        fh.write(tensor_buffer(t))
        if on_tensor is not None:
            on_tensor(spec)


def shard_specs(specs: Iterable[TensorSpec], max_bytes: int) -> list[list[TensorSpec]]:
    """Split tensors into consecutive shards of at most `max_bytes` (one tensor may exceed it)."""
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        if shards[-1] and size + spec.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += spec.nbytes
    return shards
