"""A cache of materialised weights: the edited tensors of one model state, ready to use.

Materialising a long history means reading every delta of the effective set and one
large float64 product per edited weight (1000 edits on SmolLM2-135M: seconds). The
result depends only on the state key (the base and the ordered delta ids in effect,
`Repo.state_key`), so export and a freshly loaded model keep it in
`cache/materialised/<key>.safetensors`, and the next process asking for the same state
reads it instead of recomputing.

A rebuildable cache, never history: written atomically (temp file, fsync, rename), at
most `KEEP` states on disk (the oldest goes first), and used only when the file records
the key it was asked for and its tensors hash to the digest it records; anything else
is ignored and recomputed. Short histories are not cached (`MIN_DELTAS`): computing
them is about as fast as reading them back.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING

from .. import tensorio
from ..storage.fsutil import atomic_write

if TYPE_CHECKING:
    import numpy
    import torch

#: states kept on disk (each holds every edited weight once: 17.7 MiB for 5 layers of SmolLM2-135M)
KEEP = 2
#: fewer deltas than this in a state: not worth a file
MIN_DELTAS = 32
_DIR = "materialised"
_SUFFIX = ".safetensors"


def _digest(buffers: dict[str, object]) -> str:
    """Over each tensor's name and bytes (any buffer: a tensor's, or a slice of the file)."""
    h = hashlib.sha256()
    for name in sorted(buffers):
        h.update(name.encode("utf-8") + b"\0")
        h.update(buffers[name])
    return h.hexdigest()


class MaterialisedCache:
    """get / put of {weight name: tensor} by state key under `<repo>/cache/materialised/`."""

    def __init__(self, cache_dir: Path):
        self.dir = Path(cache_dir) / _DIR

    def path(self, key: str) -> Path:
        return self.dir / f"{key}{_SUFFIX}"

    def get_raw(self, key: str) -> dict[str, tuple[tensorio.TensorSpec, memoryview]] | None:
        """{name: (spec, bytes)} stored for `key`, read without torch (so an export of a cached
        state starts fast), or None when absent, for another key, or damaged."""
        try:
            data = bytearray(self.path(key).read_bytes())
            layout = tensorio.read_layout(io.BytesIO(data))
            meta = json.loads(layout.metadata["nmkevc"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if len(data) < layout.size or not isinstance(meta, dict) or meta.get("state") != key:
            return None
        view = memoryview(data)
        raw = {name: (spec, view[offset : offset + spec.nbytes]) for name, (spec, offset) in layout.tensors.items()}
        if meta.get("sha256") != _digest({name: buf for name, (_, buf) in raw.items()}):
            return None
        return raw

    def get(self, key: str) -> dict[str, torch.Tensor] | None:
        """The tensors stored for `key`, or None as `get_raw`."""
        raw = self.get_raw(key)
        return None if raw is None else self.tensors(raw)

    @staticmethod
    def tensors(raw: dict[str, tuple[tensorio.TensorSpec, memoryview]]) -> dict[str, torch.Tensor]:
        """`get_raw`'s bytes as tensors (sharing the bytes read, no copy)."""
        return {name: tensorio.tensor_view(buf, spec) for name, (spec, buf) in raw.items()}

    def put(self, key: str, tensors: dict[str, torch.Tensor | numpy.ndarray]) -> None:
        """Store the tensors (or arrays) of state `key` (best effort: a cache that cannot be written is
        simply not there next time), then drop the oldest states beyond KEEP."""
        meta = json.dumps({"state": key, "sha256": _digest({n: tensorio.tensor_buffer(t) for n, t in tensors.items()})},
                          sort_keys=True)
        with contextlib.suppress(OSError):
            self.dir.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path(key), tensorio.dumps(tensors, {"nmkevc": meta}), what="cache")
            self._trim(keep=key)

    def clear(self) -> int:
        """Delete every stored state; returns how many files went."""
        n = 0
        for f in self._files():
            with contextlib.suppress(OSError):
                f.unlink()
                n += 1
        return n

    def _files(self) -> list[Path]:
        try:
            return [f for f in self.dir.iterdir() if f.name.endswith(_SUFFIX)]
        except OSError:
            return []

    def _trim(self, keep: str) -> None:
        def age(f: Path) -> float:
            try:
                return f.stat().st_mtime
            except OSError:
                return 0.0

        others = sorted((f for f in self._files() if f.name != f"{keep}{_SUFFIX}"), key=age, reverse=True)
        for f in others[KEEP - 1 :]:
            with contextlib.suppress(OSError):
                f.unlink()
