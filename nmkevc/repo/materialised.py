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
import json
from pathlib import Path
from typing import TYPE_CHECKING

from .. import tensorio
from ..storage.fsutil import atomic_write

if TYPE_CHECKING:
    import torch

#: states kept on disk (each holds every edited weight once: 17.7 MiB for 5 layers of SmolLM2-135M)
KEEP = 2
#: fewer deltas than this in a state: not worth a file
MIN_DELTAS = 32
_DIR = "materialised"
_SUFFIX = ".safetensors"


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode("utf-8") + b"\0")
        h.update(tensorio.tensor_bytes(tensors[name]))
    return h.hexdigest()


class MaterialisedCache:
    """get / put of {weight name: tensor} by state key under `<repo>/cache/materialised/`."""

    def __init__(self, cache_dir: Path):
        self.dir = Path(cache_dir) / _DIR

    def path(self, key: str) -> Path:
        return self.dir / f"{key}{_SUFFIX}"

    def get(self, key: str) -> dict[str, torch.Tensor] | None:
        """The tensors stored for `key`, or None when absent, for another key, or damaged."""
        try:
            data = self.path(key).read_bytes()
            tensors, metadata = tensorio.loads(data)
            meta = json.loads(metadata["nmkevc"])
        except (OSError, ValueError, KeyError, TypeError, RuntimeError):
            return None
        except Exception:  # whatever a damaged file makes the reader raise: a miss, not a crash
            return None
        if not isinstance(meta, dict) or meta.get("state") != key or meta.get("sha256") != _digest(tensors):
            return None
        return tensors

    def put(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        """Store the tensors of state `key` (best effort: a cache that cannot be written is
        simply not there next time), then drop the oldest states beyond KEEP."""
        meta = json.dumps({"state": key, "sha256": _digest(tensors)}, sort_keys=True)
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
