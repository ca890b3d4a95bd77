"""Where a base's weights live: a local directory, a hub id, or the embedded default.

The repository records the location next to the base's content id; weights are read
from there and verified against the manifest, never copied unless the user asks.
"""

from __future__ import annotations

from pathlib import Path

from ..bases import EMBEDDED_NAME, BaseSource, looks_like_hub_id, parse_base_argument
from ..errors import NmkevcError
from .weights import AUX_FILES

__all__ = ["EMBEDDED_NAME", "BaseSource", "looks_like_hub_id", "parse_base_argument", "resolve_dir"]


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
