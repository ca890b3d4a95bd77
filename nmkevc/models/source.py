"""Where a base's weights live: a local directory, a hub id, or the embedded default.

The repository records the location next to the base's content id; weights are read
from there and verified against the manifest, never copied unless the user asks.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import NmkevcError
from .weights import AUX_FILES

EMBEDDED_NAME = "SmolLM2-135M-Instruct"
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


def resolve_dir(source: BaseSource, progress=None) -> Path:
    """A local directory holding the base's files (downloading or converting if needed)."""
    if source.kind == "local":
        p = Path(source.location)
        if not p.is_dir():
            raise NmkevcError(f"the base directory {p} is gone; point the repository at it again "
                              "with 'nmkevc base relocate DIR'")
        return p
    if source.kind == "embedded":
        from .embedded import embedded_model_dir

        return embedded_model_dir(progress=progress)
    if source.kind == "hub":
        try:
            from huggingface_hub import snapshot_download

            path = snapshot_download(
                source.location,
                revision=source.revision,
                allow_patterns=["*.safetensors", "*.safetensors.index.json", *AUX_FILES],
            )
        except Exception as e:  # network, auth, missing repo: one line for the user
            raise NmkevcError(f"cannot fetch {source.location} from the hub: {type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}") from None
        return Path(path)
    raise NmkevcError(f"unknown base source kind {source.kind!r}")
