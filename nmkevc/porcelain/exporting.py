"""Export: the model at a commit as a standard Hugging Face directory.

The output mirrors the base's safetensors files (same names, same tensors per file,
index copied), so `from_pretrained` loads it like the base. Untouched tensors are
streamed from the memory-mapped base; only edited weights are computed. The
directory appears whole or not at all (written beside the target, then renamed).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from ..deltas.compose import apply_to_weight
from ..errors import NmkevcError
from ..models.weights import AUX_FILES, BaseWeights
from ..repo.repository import Repo
from ..storage.fsutil import fsync_dir
from ..tensorio import TensorSpec, write_streaming
from .describe import facts_at


@dataclass
class ExportReport:
    commit: str
    path: str
    tensors: int
    edited_tensors: int
    bytes_written: int

    def to_json(self) -> dict:
        return asdict(self)


def export(repo: Repo, rev: str, out_dir: str | Path,
           progress: Callable[[int, int], None] | None = None) -> ExportReport:
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise NmkevcError(f"export target {out} exists and is not an empty directory")
    cid = repo.resolve(rev)
    c = repo.commit(cid)
    model_dir = repo.base_dir(c.base)
    weights = BaseWeights(model_dir)
    plan = repo.plan(cid)
    resolved = {weights.resolve(name): entries for name, entries in plan.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".export", dir=out.parent))
    total = len(weights.specs())
    done = [0]

    def produce(spec: TensorSpec):
        t = weights.get(spec.name)
        entries = resolved.get(spec.name)
        return apply_to_weight(t, [w for _, w in entries]) if entries else t

    def tick(_spec: TensorSpec) -> None:
        done[0] += 1
        if progress:
            progress(done[0], total)

    written = 0
    try:
        for fname, names in sorted(weights.files().items()):
            specs = [weights.spec(n) for n in names]
            with open(tmp / fname, "wb") as fh:
                write_streaming(fh, specs, produce, metadata={"format": "pt"}, on_tensor=tick)
                fh.flush()
                os.fsync(fh.fileno())
            written += (tmp / fname).stat().st_size
        for name in AUX_FILES:
            src = model_dir / name
            if src.is_file():
                shutil.copyfile(src, tmp / name)
        for index in model_dir.glob("*.safetensors.index.json"):
            shutil.copyfile(index, tmp / index.name)
        provenance = {
            "tool": "nmkevc",
            "commit": cid,
            "base": c.base,
            "effective_set": repo.effective(cid),
            "facts": [r for _, r in facts_at(repo, cid)],
        }
        (tmp / "nmkevc.json").write_text(json.dumps(provenance, indent=2) + "\n", "utf-8")
        if out.exists():
            out.rmdir()
        os.rename(tmp, out)
        fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportReport(cid, str(out), total, len(resolved), written)
