"""Export: the model at a commit as a standard Hugging Face directory.

Untouched tensors are copied file to file from the base (no tensor is built for them);
only edited weights are computed, or read from the materialised cache, which needs no
torch at all. The directory layout is the model layer's (models.hf_dir); staging it beside
the target and renaming it into place, so a killed export leaves nothing gc cannot
find, is the repository's (Repo.staging_dir).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import NmkevcError
from ..models.adapters import adapter_for
from ..models.hf_dir import check_export_target, write_model_files
from ..models.weights import BaseWeights
from ..repo.repository import Repo
from ..tensorio import TensorSpec
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
    check_export_target(out)
    cid = repo.resolve(rev)
    c = repo.commit(cid)
    weights = BaseWeights(repo.base_dir(c.base), adapter_for(repo.manifest(c.base).config))
    edited = {weights.resolve(name): buf
              for name, buf in repo.materialised_buffers(c.base, repo.effective(cid), weights).items()}

    def produce(spec: TensorSpec):
        buf = edited.get(spec.name)
        return weights.byte_range(spec.name) if buf is None else buf

    provenance = {
        "tool": "nmkevc",
        "commit": cid,
        "base": c.base,
        "effective_set": repo.effective(cid),
        "facts": [r for _, r in facts_at(repo, cid)],
    }
    try:
        with repo.staging_dir(out, "export") as tmp:
            written = write_model_files(weights, tmp, produce, provenance, progress)
    except OSError as e:
        raise NmkevcError(f"cannot write export to {out}: {e.strerror or e}") from None
    return ExportReport(cid, str(out), len(weights.specs()), len(edited), written)
