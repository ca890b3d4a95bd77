"""The base manifest: a model identified by content, not by name.

sha256 of every tensor plus the config and a hash of the tokenizer files. Two copies of
the same weights in different places are the same base; a changed file is not.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from ..bases import BaseManifest, stable_config
from .adapters import adapter_for
from .weights import BaseWeights, read_config, tensor_sha256, tokenizer_sha256


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


__all__ = ["BaseManifest", "build_manifest"]
