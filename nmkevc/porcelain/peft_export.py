"""`export --format peft`: the change from the base to a revision as a LoRA adapter.

Many branches then serve side by side on one base in a multi-LoRA server instead of
one full model copy each. The adapter is exact (see deltas/lowrank.py) unless a rank
is asked for, and then the relative error per layer is reported. The directory
appears whole or not at all.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..deltas.lowrank import LowRank, low_rank
from ..errors import NmkevcError, UsageError
from ..models.adapters import adapter_for
from ..models.hf_dir import check_export_target
from ..models.lora import lora_config, lora_tensors, write_adapter_files
from ..repo.repository import Repo
from .describe import facts_at


@dataclass
class PeftExportReport:
    commit: str
    path: str
    rank: int
    layers: list[int]
    facts: int
    exact: bool
    max_error: float
    errors: dict[int, float] = field(default_factory=dict)  # layer -> ||ΔW - BA||_F / ||ΔW||_F
    bytes_written: int = 0

    def to_json(self) -> dict:
        return asdict(self)


def export_peft(repo: Repo, rev: str, out_dir: str | Path, rank: int | None = None) -> PeftExportReport:
    out = Path(out_dir)
    check_export_target(out)
    if rank is not None and rank < 1:
        raise UsageError("--rank must be at least 1")
    cid = repo.resolve(rev)
    base = repo.commit(cid).base
    adapter = adapter_for(repo.manifest(base).config)
    factors: dict[int, LowRank] = {}
    for _name, entries in sorted(repo.plan(cid).items()):
        deltas = [w for _, w in entries]
        f = low_rank(deltas, rank)
        if f is not None:
            factors[deltas[0].layer] = f
    if not factors:
        raise NmkevcError(f"nothing to export: {rev} has no edits in effect (it is the base)")
    tensors, r = lora_tensors(adapter, factors)
    source = repo.base_source(base)
    base_name = source.location if source.kind == "hub" else str(repo.base_dir(base))
    config = lora_config(adapter, sorted(factors), r, base_name)
    provenance = {"tool": "nmkevc", "commit": cid, "base": base,
                  "facts": [req for _, req in facts_at(repo, cid)]}
    try:
        with repo.staging_dir(out, "export") as tmp:  # whole or absent; gc reaps a killed one
            written = write_adapter_files(tmp, tensors, config, provenance)
    except OSError as e:
        raise NmkevcError(f"cannot write export to {out}: {e.strerror or e}") from None
    errors = {layer: f.error for layer, f in sorted(factors.items())}
    return PeftExportReport(
        commit=cid, path=str(out), rank=r, layers=sorted(factors), facts=len(provenance["facts"]),
        exact=rank is None, max_error=max(errors.values()), errors=errors, bytes_written=written,
    )
