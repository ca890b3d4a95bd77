"""What a base is, as plain records: where its files live (`BaseSource`) and what they
hold (`BaseManifest`, the content of a `base` object).

Records only, with no model code: the storage-level repository reads and writes them
without loading any model machinery; verifying files against a manifest and loading
weights are the model layer's (models.manifest, models.source).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import NmkevcError
from .storage.objects import canonical_json

EMBEDDED_NAME = "SmolLM2-135M-Instruct"
#: what a model card says of the embedded base: its id on the Hugging Face hub and its licence
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
EMBEDDED_LICENSE = "apache-2.0"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class BaseSource:
    kind: str  # "local" | "hub" | "embedded"
    location: str
    revision: str | None = None

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, d: dict) -> BaseSource:
        return cls(d["kind"], d["location"], d.get("revision"))

    def describe(self) -> str:
        if self.kind == "embedded":
            return f"embedded {self.location}"
        return self.location + (f"@{self.revision}" if self.revision else "")


def parse_base_argument(arg: str | None, revision: str | None = None) -> BaseSource:
    """`--base` as the user typed it: None → embedded default, a directory, or a hub id."""
    if arg is None:
        return BaseSource("embedded", EMBEDDED_NAME)
    p = Path(arg).expanduser()
    if p.exists():
        if not p.is_dir():
            raise NmkevcError(f"--base {arg}: not a directory")
        return BaseSource("local", str(p.resolve()))
    if looks_like_hub_id(arg):
        return BaseSource("hub", arg, revision)
    raise NmkevcError(f"--base {arg}: no such directory, and not a hub id of the form org/name")


def looks_like_hub_id(arg: str) -> bool:
    """org/name, as the hub spells ids (a path like ./x or /x never is one)."""
    return bool(_HUB_ID.match(arg)) and not arg.startswith((".", "/"))


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
