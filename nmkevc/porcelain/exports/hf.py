"""`export --format hf`: the model at a commit as a standard Hugging Face directory.

Untouched tensors are copied file to file from the base (no tensor is built for them);
only edited weights are computed, or read from the materialised cache, which needs no
torch at all. The directory layout is the model layer's (models.hf_dir).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from ...models.hf_dir import write_model_files
from ...tensorio import TensorSpec
from ...units import human_bytes
from . import ExportFormat, ExportJob, card, register


@dataclass
class ExportReport:
    commit: str
    path: str
    tensors: int
    edited_tensors: int
    bytes_written: int

    def to_json(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        return (f"Exported {self.commit[:10]} to {self.path}: {self.tensors} tensors "
                f"({self.edited_tensors} edited), {human_bytes(self.bytes_written)}")


def write(job: ExportJob, tmp: Path) -> ExportReport:
    bench = job.bench
    weights = bench.weights(job.base)
    edited = {weights.resolve(name): buf for name, buf in
              bench.materialised_buffers(job.base, job.provenance["effective_set"], weights).items()}

    def produce(spec: TensorSpec):
        buf = edited.get(spec.name)
        return weights.byte_range(spec.name) if buf is None else buf

    written = write_model_files(weights, tmp, produce, job.provenance, job.progress)
    card.write(job, tmp, "transformers", "a full model directory (Hugging Face format)")
    return ExportReport(job.commit, str(job.target), len(weights.specs()), len(edited), written)


register(ExportFormat("hf", "the whole model as a Hugging Face directory", {}, write))
