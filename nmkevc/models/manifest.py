"""The base manifest: a model identified by content, not by name.

sha256 of every tensor plus the config and a hash of the tokenizer files. Two copies of
the same weights in different places are the same base; a changed file is not.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..storage.objects import canonical_json
from .adapters import adapter_for
from .weights import BaseWeights, read_config, tensor_sha256, tokenizer_sha256

FORMAT = 1
#: Config keys that say where or with what a file was written, not what the model is.
VOLATILE_CONFIG_KEYS = ("_name_or_path", "_model_name_or_path", "transformers_version", "dtype",
                        "torch_dtype")


@dataclass(frozen=True)
class BaseManifest:
    architecture: str
    model_type: str
    config: dict
    tensors: dict[str, dict]
    tokenizer_sha256: str

    def to_bytes(self) -> bytes:
        return canonical_json(
            {
                "format": FORMAT,
                "architecture": self.architecture,
                "model_type": self.model_type,
                "config": self.config,
                "tensors": self.tensors,
                "tokenizer_sha256": self.tokenizer_sha256,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> BaseManifest:
        d = json.loads(data)
        return cls(d["architecture"], d["model_type"], d["config"], d["tensors"], d["tokenizer_sha256"])

    @property
    def num_parameters(self) -> int:
        n = 0
        for t in self.tensors.values():
            k = 1
            for s in t["shape"]:
                k *= s
            n += k
        return n


def stable_config(config: dict) -> dict:
    return {k: v for k, v in sorted(config.items()) if k not in VOLATILE_CONFIG_KEYS}


def build_manifest(
    model_dir: Path,
    progress: Callable[[int, int], None] | None = None,
    hash_cache: dict | None = None,
) -> BaseManifest:
    """Hash every tensor of a model directory. `hash_cache` maps file stat keys to
    per-tensor hashes so an unchanged file is not re-read (the cache belongs to the
    repository, which decides where it lives)."""
    config = read_config(model_dir)
    adapter = adapter_for(config)
    weights = BaseWeights(model_dir)
    tensors: dict[str, dict] = {}
    specs = {s.name: s for s in weights.specs()}
    files = weights.files()
    done = 0
    for fname, names in sorted(files.items()):
        path = Path(model_dir) / fname
        st = os.stat(path)
        key = f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"
        cached = hash_cache.get(key) if hash_cache is not None else None
        if cached is None:
            cached = {name: tensor_sha256(weights.get(name)) for name in names}
            if hash_cache is not None:
                hash_cache[key] = cached
        for name in names:
            spec = specs[name]
            tensors[name] = {
                "dtype": str(spec.dtype).replace("torch.", ""),
                "shape": list(spec.shape),
                "sha256": cached[name],
            }
            done += 1
            if progress:
                progress(done, len(specs))
    return BaseManifest(
        architecture=adapter.name,
        model_type=config.get("model_type", ""),
        config=stable_config(config),
        tensors=dict(sorted(tensors.items())),
        tokenizer_sha256=tokenizer_sha256(model_dir),
    )
