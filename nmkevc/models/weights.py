"""Reading a base model's tensors straight from its safetensors files (memory-mapped).

nmkevc never unpickles: a base must hold its weights as safetensors, which every
current Hugging Face checkpoint does.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors import safe_open

from ..errors import BaseMismatchError, NmkevcError
from ..tensorio import ByteRange, TensorSpec, numpy_dtype, read_layout

if TYPE_CHECKING:
    import numpy
    import torch

    from .adapters import ArchAdapter

#: Files that define how text becomes tokens; their hash is part of the base's identity.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "added_tokens.json",
    "chat_template.jinja",
)
#: Other small files an exported model directory should carry over.
AUX_FILES = ("config.json", "generation_config.json") + TOKENIZER_FILES


def safetensors_files(model_dir: Path) -> list[Path]:
    model_dir = Path(model_dir)
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        if any(model_dir.glob("*.bin")) or any(model_dir.glob("*.pt")):
            raise NmkevcError(
                f"{model_dir} holds only pickle weights (.bin); nmkevc reads safetensors only — "
                "convert with save_pretrained(..., safe_serialization=True)"
            )
        raise NmkevcError(f"{model_dir} contains no .safetensors weights")
    return files


@dataclass
class BaseWeights:
    """Name → tensor access over a model directory's safetensors files.

    With an adapter, a parameter name also finds the tensor under the shorter name its
    family's old checkpoints use (the adapter says which)."""

    model_dir: Path
    adapter: ArchAdapter | None = None

    def __post_init__(self) -> None:
        self.model_dir = Path(self.model_dir)
        self._where: dict[str, Path] = {}
        self._specs: list[TensorSpec] = []
        self._spec_by_name: dict[str, TensorSpec] = {}
        self._offset: dict[str, int] = {}
        self._handles: dict[Path, object] = {}
        for f in safetensors_files(self.model_dir):  # headers read directly: no torch to list a model
            try:
                with open(f, "rb") as fh:
                    layout = read_layout(fh)
                size = f.stat().st_size
            except OSError as e:
                raise NmkevcError(f"cannot read {f}: {e.strerror or e}") from None
            except ValueError as e:
                raise NmkevcError(f"{f} is not a usable safetensors file: {e}") from None
            if size < layout.size:
                raise NmkevcError(f"{f} is truncated ({size} bytes, its header describes {layout.size})")
            for name in sorted(layout.tensors):  # the order safetensors' own reader lists them in
                spec, offset = layout.tensors[name]
                self._where[name] = f
                self._specs.append(spec)
                self._spec_by_name[name] = spec
                self._offset[name] = offset

    def specs(self) -> list[TensorSpec]:
        return list(self._specs)

    def names(self) -> list[str]:
        return [s.name for s in self._specs]

    def resolve(self, name: str) -> str:
        """The file's name for a model parameter name."""
        for cand in self.adapter.checkpoint_names(name) if self.adapter else (name,):
            if cand in self._where:
                return cand
        raise BaseMismatchError(f"the base has no tensor {name!r}")

    def spec(self, name: str) -> TensorSpec:
        return self._spec_by_name[self.resolve(name)]

    def get(self, name: str) -> torch.Tensor:
        name = self.resolve(name)
        f = self._where[name]
        h = self._handles.get(f)
        if h is None:
            h = safe_open(f, framework="pt")
            self._handles[f] = h
        return h.get_tensor(name)

    def array(self, name: str) -> numpy.ndarray:
        """The tensor as a numpy array read straight from its file (no torch; ValueError for
        a dtype numpy lacks, bfloat16)."""
        import numpy as np

        r, spec = self.byte_range(name), self.spec(name)
        dtype = np.dtype(numpy_dtype(spec.dtype)).newbyteorder("<")
        try:
            with open(r.path, "rb") as fh:
                fh.seek(r.offset)
                out = np.fromfile(fh, dtype=dtype, count=r.nbytes // spec.itemsize)
        except OSError as e:
            raise NmkevcError(f"cannot read {r.path}: {e.strerror or e}") from None
        if out.nbytes != r.nbytes:
            raise NmkevcError(f"{r.path} ends before its header says")
        return out.reshape(spec.shape)

    def byte_range(self, name: str) -> ByteRange:
        """Where the tensor's bytes lie in its file (export copies them without reading them)."""
        name = self.resolve(name)
        return ByteRange(self._where[name], self._offset[name], self._spec_by_name[name].nbytes)

    def files(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for name, f in self._where.items():
            out.setdefault(f.name, []).append(name)
        return out


def tensor_sha256(t: torch.Tensor) -> str:
    from ..tensorio import tensor_bytes

    return hashlib.sha256(tensor_bytes(t)).hexdigest()


def tokenizer_sha256(model_dir: Path) -> str:
    h = hashlib.sha256()
    for name in TOKENIZER_FILES:
        p = Path(model_dir) / name
        if p.is_file():
            h.update(name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def read_config(model_dir: Path) -> dict:
    p = Path(model_dir) / "config.json"
    try:
        return json.loads(p.read_text("utf-8"))
    except FileNotFoundError:
        raise NmkevcError(f"{model_dir} is not a Hugging Face model directory (no config.json)") from None
    except ValueError:
        raise NmkevcError(f"{p} is not valid JSON") from None
