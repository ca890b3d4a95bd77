"""Safetensors bytes we control: canonical for hashing, streamable for export.

The library's writer is fine for reading back, but object identity hashes the bytes,
so we write the (simple, documented) format ourselves with a sorted header; the
result is a standard safetensors file any reader accepts. Export streams tensors one
at a time so a large model never has to sit in memory twice. Reading is ours too
(`loads`): the library's reader copies every tensor, and a long history's export reads
thousands of them.
"""

from __future__ import annotations

import io
import json
import math
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Union

if TYPE_CHECKING:  # tensors arrive from callers; reading a header needs no torch
    import numpy
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
_CODE_NAMES = {code: name for name, (code, _) in DTYPE_CODES.items()}


def dtype_name(dtype: torch.dtype | str) -> str:
    """"float32" for torch.float32 (and for "float32")."""
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class TensorSpec:
    """A tensor's name, dtype (by name, "float32": no torch needed to describe a file) and shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    # plain properties: reading a long history's deltas asks for them ~100,000 times, and a
    # cached_property (which takes a lock on Python 3.11) cost more than computing them
    @property
    def itemsize(self) -> int:
        return DTYPE_CODES[dtype_name(self.dtype)][1]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.itemsize


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


def tensor_buffer(t: torch.Tensor | numpy.ndarray):
    """The tensor's bytes as a buffer (no copy for a contiguous CPU tensor): what a file
    write takes directly, where `tensor_bytes` would copy 500 MB once more on export. A numpy
    array (what a torch-free export computes) gives its bytes the same way."""
    if not hasattr(t, "detach"):
        import numpy as np

        return np.ascontiguousarray(t).reshape(-1).view(np.uint8) if t.size else b""
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
    specs = [TensorSpec(n, dtype_name(tensors[n].dtype), tuple(tensors[n].shape)) for n in names]
    parts = [_header(specs, metadata)]
    parts.extend(tensor_bytes(tensors[n]) for n in names)
    return b"".join(parts)


def loads(data: bytes, want: Callable[[str], bool] | None = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read safetensors bytes (ours or anyone's) into tensors and metadata; `want`: only the
    tensors whose names it accepts.

    The tensors are views of one writable copy of `data`, not a copy each (safetensors' own
    reader makes one per tensor): a long history's export reads a thousand deltas."""
    layout = checked_layout(data)
    buf = bytearray(data)
    return {name: tensor_view(buf, spec, offset) for name, (spec, offset) in layout.tensors.items()
            if want is None or want(name)}, layout.metadata


def loads_arrays(data: bytes, want: Callable[[str], bool] | None = None,
                 ) -> tuple[dict[str, numpy.ndarray], dict[str, str]]:
    """`loads` without torch: numpy arrays (read-only views of `data`) for what only reads
    numbers (an export sums a thousand deltas' factors and needs no torch for it). A dtype
    numpy lacks (bfloat16) is a ValueError."""
    import numpy as np

    layout = checked_layout(data)
    out = {}
    for name, (spec, offset) in layout.tensors.items():
        if want is None or want(name):
            dtype = np.dtype(numpy_dtype(spec.dtype)).newbyteorder("<")
            out[name] = np.frombuffer(data, dtype=dtype, count=spec.nbytes // spec.itemsize,
                                      offset=offset).reshape(spec.shape)
    return out, layout.metadata


def numpy_dtype(dtype: str) -> str:
    """The numpy name of a dtype (they match but for bfloat16, which numpy has not: ValueError)."""
    name = dtype_name(dtype)
    if name == "bfloat16":
        raise ValueError("numpy has no bfloat16")
    return name


def checked_layout(data: bytes) -> Layout:
    """The layout of safetensors bytes held whole, checked as safetensors' own reader checks
    them: string metadata, and tensors that fill the data section exactly, without gaps or
    overlaps (ValueError otherwise)."""
    layout = read_layout(io.BytesIO(data))
    meta = layout.metadata
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise ValueError("safetensors metadata must map text to text")
    at = layout.start
    for spec, offset in sorted(layout.tensors.values(), key=lambda t: (t[1], t[0].nbytes)):
        if offset != at:
            raise ValueError(f"tensor {spec.name!r}: the data section has a gap or an overlap before it")
        at += spec.nbytes
    if at != len(data):
        raise ValueError("the safetensors data section is not the rest of the bytes")
    return layout


def tensor_view(buf: bytearray | memoryview, spec: TensorSpec, offset: int = 0) -> torch.Tensor:
    """The tensor whose bytes lie at `offset` in the writable `buf`, sharing them (copied only
    where they are not aligned to the element size, which no kernel then has to cope with)."""
    import torch

    dtype, size = getattr(torch, dtype_name(spec.dtype)), spec.itemsize
    if not spec.nbytes:
        return torch.empty(spec.shape, dtype=dtype)
    t = torch.frombuffer(buf, dtype=dtype, count=spec.nbytes // size, offset=offset)
    return (t if t.data_ptr() % size == 0 else t.clone()).reshape(spec.shape)


@dataclass(frozen=True)
class ByteRange:
    """A tensor's bytes where they lie in a file: an export copies them file to file (in the
    kernel where it can) instead of reading them into a tensor and writing that out."""

    path: Path
    offset: int
    nbytes: int


@dataclass(frozen=True)
class Layout:
    """What a safetensors header says: each tensor's spec and where its bytes start (from the
    beginning of the file), the metadata, how long the file must be and where its data start."""

    tensors: dict[str, tuple[TensorSpec, int]]
    metadata: dict[str, str]
    size: int
    start: int


def _read_header(fh: BinaryIO) -> tuple[dict, int]:
    """The JSON header of the safetensors bytes in `fh`, and where their data section starts."""
    raw = fh.read(8)
    if len(raw) < 8:
        raise ValueError("truncated safetensors header")
    (n,) = struct.unpack("<Q", raw)
    body = fh.read(n)
    if len(body) < n:
        raise ValueError("truncated safetensors header")
    try:
        header = json.loads(body)
    except ValueError:
        raise ValueError("safetensors header is not JSON") from None
    if not isinstance(header, dict):
        raise ValueError("safetensors header is not a JSON object")
    return header, 8 + n


def read_layout(fh: BinaryIO) -> Layout:
    """The layout of the safetensors file open in `fh` (read without torch); ValueError for a
    header that is truncated, not JSON, or describes bytes its dtype and shape do not fill."""
    header, start = _read_header(fh)
    metadata = header.pop("__metadata__", None) or {}
    tensors: dict[str, tuple[TensorSpec, int]] = {}
    end = 0
    for name, entry in header.items():
        try:
            dtype = _CODE_NAMES[entry["dtype"]]
            shape = tuple(int(x) for x in entry["shape"])
            begin, stop = (int(x) for x in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"tensor {name!r}: unsupported dtype or malformed header entry") from None
        spec = TensorSpec(name, dtype, shape)
        if begin < 0 or any(d < 0 for d in shape) or stop - begin != spec.nbytes:
            raise ValueError(f"tensor {name!r}: its data offsets do not match its dtype and shape")
        tensors[name] = (spec, start + begin)
        end = max(end, stop)
    return Layout(tensors, metadata, start + end, start)


def copy_range(src: ByteRange, fd: int) -> None:
    """Append src's bytes to the file open as `fd` (at its current position)."""
    with open(src.path, "rb") as fin:
        offset, left = src.offset, src.nbytes
        try:
            while left:
                n = os.copy_file_range(fin.fileno(), fd, left, offset)
                if n == 0:
                    raise ValueError(f"{src.path} ends before its header says")
                offset, left = offset + n, left - n
        except (AttributeError, OSError):  # not Linux, an old kernel, or a file system that refuses
            fin.seek(offset)
            while left:
                chunk = fin.read(min(left, 1 << 24))
                if not chunk:
                    raise ValueError(f"{src.path} ends before its header says") from None
                os.write(fd, chunk)
                left -= len(chunk)


#: What an export writes for one tensor: its bytes (a buffer) or where to copy them from.
Part = Union[ByteRange, bytes, bytearray, memoryview, "numpy.ndarray"]


def write_streaming(
    fd: int,
    specs: list[TensorSpec],
    produce: Callable[[TensorSpec], Part],
    metadata: dict[str, str] | None = None,
    on_tensor: Callable[[TensorSpec], None] | None = None,
) -> None:
    """Write a safetensors file to `fd` tensor by tensor; `produce` returns each tensor's bytes
    (or the range of a file that holds them) when asked."""
    _write_all(fd, _header(specs, metadata))
    for spec in specs:
        _write_part(fd, spec, produce(spec))
        if on_tensor is not None:
            on_tensor(spec)


def overwrite_tensors(fh: BinaryIO, parts: dict[str, Part]) -> None:
    """Write each named tensor's bytes over its place in the safetensors file open (read and
    write, unbuffered) as `fh`: an export copies a base's file whole while its edited tensors
    are computed, then puts them in."""
    layout = read_layout(fh)
    for name, part in parts.items():
        if name not in layout.tensors:
            raise ValueError(f"the file has no tensor {name!r}")
        spec, offset = layout.tensors[name]
        os.lseek(fh.fileno(), offset, os.SEEK_SET)
        _write_part(fh.fileno(), spec, part)


def _write_part(fd: int, spec: TensorSpec, part: Part) -> None:
    if isinstance(part, ByteRange):
        if part.nbytes != spec.nbytes:
            raise ValueError(f"tensor {spec.name} does not match its declared dtype/shape")
        copy_range(part, fd)
        return
    view = memoryview(part).cast("B")
    if view.nbytes != spec.nbytes:
        raise ValueError(f"tensor {spec.name} does not match its declared dtype/shape")
    _write_all(fd, view)


def _write_all(fd: int, data) -> None:
    view = memoryview(data).cast("B")
    while view.nbytes:
        view = view[os.write(fd, view) :]
