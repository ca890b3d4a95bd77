"""`export --format peft`: the change from the base to a revision as a LoRA adapter.

Many branches then serve side by side on one base in a multi-LoRA server instead of
one full model copy each. The adapter is exact (see deltas/lowrank.py) unless a rank
is asked for, and then the relative error per layer is reported. The directory
appears whole or not at all.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from ...deltas.lowrank import LowRank, low_rank
from ...errors import NmkevcError, UsageError
from ...models.lora import lora_config, lora_tensors, write_adapter_files
from ...units import human_bytes
from . import ExportFormat, ExportJob, card, register


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

    def describe(self) -> str:
        how = "exact" if self.exact else f"truncated, max relative error {self.max_error:.3g}"
        return (f"Exported {self.commit[:10]} to {self.path} as a LoRA adapter: rank {self.rank}, "
                f"layers {','.join(map(str, self.layers))}, {self.facts} fact(s), {how}, "
                f"{human_bytes(self.bytes_written)}")


def write(job: ExportJob, tmp: Path) -> PeftExportReport:
    bench, base, rank = job.bench, job.base, job.options.get("rank")
    repo = bench.repo
    adapter = bench.adapter(base)
    factors: dict[int, LowRank] = {}
    for _name, entries in sorted(repo.plan(job.commit).items()):
        deltas = [w for _, w in entries]
        f = low_rank(deltas, rank)
        if f is not None:
            factors[deltas[0].layer] = f
    if not factors:
        raise NmkevcError(f"nothing to export: {job.rev} has no edits in effect (it is the base)")
    tensors, r = lora_tensors(adapter, factors)
    source = repo.base_source(base)
    base_name = source.location if source.kind == "hub" else str(bench.base_dir(base))
    config = lora_config(adapter, sorted(factors), r, base_name)
    written = write_adapter_files(tmp, tensors, config, job.provenance)
    errors = {layer: f.error for layer, f in sorted(factors.items())}
    how = ("exact: the adapter reproduces the edited weights up to float rounding" if rank is None else
           f"truncated to rank {r}: largest relative error per layer {max(errors.values()):.3g}")
    card.write(job, tmp, "peft", "a LoRA adapter (PEFT) of the change from the base",
               ["## The adapter", "", f"Rank {r} on the MLP output projection of layers "
                f"{', '.join(map(str, sorted(factors)))}; {how}. Load it with "
                "`PeftModel.from_pretrained(base_model, this_directory)`.", ""])
    return PeftExportReport(
        commit=job.commit, path=str(job.target), rank=r, layers=sorted(factors), facts=len(job.provenance["facts"]),
        exact=rank is None, max_error=max(errors.values()), errors=errors, bytes_written=written,
    )


def check(options: dict) -> None:
    rank = options.get("rank")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise UsageError("--rank must be at least 1")


register(ExportFormat("peft", "a LoRA adapter of the change from the base (PEFT)",
                      {"rank": "truncate the adapter to this rank (the error is reported)"}, write, check))
