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
from ..tensorio import TensorSpec

if TYPE_CHECKING:
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
        self._handles: dict[Path, object] = {}
        for f in safetensors_files(self.model_dir):
            with safe_open(f, framework="pt") as h:
                for name in h.keys():  # noqa: SIM118 - safe_open has no __iter__
                    sl = h.get_slice(name)
                    dtype = _dtype(sl.get_dtype())
                    self._where[name] = f
                    spec = TensorSpec(name, dtype, tuple(sl.get_shape()))
                    self._specs.append(spec)
                    self._spec_by_name[name] = spec

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

    def files(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for name, f in self._where.items():
            out.setdefault(f.name, []).append(name)
        return out


_DTYPE_NAMES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
}


def _dtype(code: str) -> torch.dtype:
    import torch  # here, not at the top: modules that only name files load without torch

    try:
        return getattr(torch, _DTYPE_NAMES[code])
    except KeyError:
        raise NmkevcError(f"unsupported tensor dtype {code} in base weights") from None


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
