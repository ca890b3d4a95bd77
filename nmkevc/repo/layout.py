"""On-disk layout and the repository config file."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import NmkevcError, NotARepositoryError
from ..models.source import BaseSource
from ..storage.fsutil import atomic_write
from ..storage.objects import canonical_json

REPO_DIR = ".nmkevc"
FORMAT = 1


def find_repo_dir(start: Path) -> Path:
    """The `.nmkevc` directory of `start` or of its nearest parent that has one, or `start`
    itself when it is a bare repository (the layout `push` creates at an empty remote)."""
    start = Path(start).resolve()
    if is_bare_layout(start):
        return start
    for d in (start, *start.parents):
        cand = d / REPO_DIR
        if (cand / "config.json").is_file():
            return cand
    raise NotARepositoryError(f"not an nmkevc repository (or any parent up to /): {start}")


def is_bare_layout(path: Path) -> bool:
    """config.json, HEAD, objects/ and refs/ directly in `path` (no `.nmkevc` around them)."""
    p = Path(path)
    return ((p / "config.json").is_file() and (p / "HEAD").is_file() and (p / "objects").is_dir()
            and (p / "refs").is_dir())


@dataclass
class RepoConfig:
    """Mutable settings. Bases are keyed by content id; the source says where they live."""

    bases: dict[str, BaseSource] = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    #: remote name -> URL (never credentials: those come from the fsspec backend's own config)
    remotes: dict[str, str] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        d = {
            "format": FORMAT,
            "bases": {k: v.to_json() for k, v in sorted(self.bases.items())},
            "settings": self.settings,
        }
        if self.remotes:
            d["remotes"] = dict(sorted(self.remotes.items()))
        return canonical_json(d)

    @classmethod
    def load(cls, path: Path) -> RepoConfig:
        try:
            d = json.loads(Path(path).read_text("utf-8"))
            return cls(
                bases={k: BaseSource.from_json(v) for k, v in d.get("bases", {}).items()},
                settings=d.get("settings") or {},
                remotes={str(k): str(v) for k, v in (d.get("remotes") or {}).items()},
            )
        except (ValueError, KeyError, TypeError):
            raise NotARepositoryError(f"{path} is corrupt; the repository cannot be opened") from None

    @property
    def lock_wait(self) -> float:
        """Default seconds a writer waits for the lock (setting `lock_wait`; 0 = refuse)."""
        v = self.settings.get("lock_wait", 0)
        if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
            raise NmkevcError(f"config setting lock_wait must be a number of seconds >= 0, not {v!r}")
        return float(v)

    def save(self, path: Path) -> None:
        atomic_write(path, self.to_bytes(), what="config")


LAYOUT_DIRS = ("objects", "refs/heads", "refs/tags", "logs", "cache")


def make_layout(repo_dir: Path) -> None:
    """The directories of a repository (or of one being built in a temp folder)."""
    for sub in LAYOUT_DIRS:
        (Path(repo_dir) / sub).mkdir(parents=True, exist_ok=True)
