"""The page: the record written into `page.html` so that no user text can become markup.

The record goes in as gzip-compressed JSON in base64 (the browser's own DecompressionStream
unpacks it: no library), which makes a 1000-commit page less than half as big as with plain
JSON (docs/view.md, docs/figures/view.json) and leaves no character of user text in the HTML. Commit messages,
facts and refs are untrusted (a fetched commit may carry `<script>`): the script writes every
string as text (textContent), never as HTML, and the page's Content Security Policy forbids any
request, so the page stays offline whatever it shows.
"""

from __future__ import annotations

import base64
import gzip
import html
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

from ...deltas.measure import DEFAULT_MASK_THRESHOLD
from ...errors import NmkevcError
from ...repo.repository import Repo
from .data import gather

DATA_MARK = "/*NMKEVC_DATA*/"
DATA_OPEN = '<script type="application/octet-stream" id="nmkevc-data">'
TITLE_MARK = "<!--NMKEVC_TITLE-->"


@dataclass
class ViewReport:
    path: str | None
    bytes: int
    commits: int
    spec: str
    data: dict = field(repr=False, default_factory=dict)

    def to_json(self) -> dict:
        return {"path": self.path, "bytes": self.bytes, "commits": self.commits, "spec": self.spec}


def embed(data: dict) -> str:
    """The record as base64 of gzip-compressed JSON (deterministic: no time stamp in the gzip
    header); a float that JSON cannot carry (NaN, infinity) becomes null."""
    text = json.dumps(_finite(data), ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=str)
    return base64.b64encode(gzip.compress(text.encode("utf-8"), compresslevel=9, mtime=0)).decode("ascii")


def read_data(page: str) -> dict:
    """The record a page carries (for tests and for tools that read a page someone sent)."""
    start = page.index(DATA_OPEN) + len(DATA_OPEN)
    blob = page[start:page.index("</script>", start)]
    return json.loads(gzip.decompress(base64.b64decode(blob)))


def _finite(obj: object) -> object:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def render(data: dict) -> str:
    """The HTML page carrying `data`."""
    template = files(__package__).joinpath("page.html").read_text(encoding="utf-8")
    title = f"nmkevc view: {data.get('title', '')} {data.get('selection', {}).get('spec', '')}"
    return template.replace(TITLE_MARK, html.escape(title)).replace(DATA_MARK, embed(data))


def write_view(repo: Repo, spec: str = "HEAD", output: str | os.PathLike | None = None,
               mask_threshold: float = DEFAULT_MASK_THRESHOLD) -> ViewReport:
    """Gather `spec`'s record, render the page and (if `output` is given) write it whole or not
    at all (a temporary file renamed over the target)."""
    data = gather(repo, spec, mask_threshold)
    page = render(data).encode("utf-8")
    path = None
    if output is not None:
        target = Path(output)
        if target.is_dir():
            raise NmkevcError(f"cannot write {target}: it is a directory")
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent or ".")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(page)
                os.chmod(tmp, 0o644)
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as e:
            raise NmkevcError(f"cannot write {target}: {e.strerror or e}") from None
        path = str(target)
    return ViewReport(path, len(page), len(data["commits"]), data["selection"]["spec"], data)
