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
    from concurrent.futures import ThreadPoolExecutor

    bench = job.bench
    weights = bench.weights(job.base)
    names, compute = bench.pending_buffers(job.base, job.provenance["effective_set"], weights)
    edited = {weights.resolve(name): name for name in names}
    # the sums run on another thread (numpy and the file copies release the GIL) while the
    # untouched tensors are copied and flushed; the edited ones fill their places last
    with ThreadPoolExecutor(max_workers=1) as pool:
        buffers = pool.submit(compute)

        def produce(spec: TensorSpec):
            name = edited.get(spec.name)
            if name is None:
                return weights.byte_range(spec.name)
            return lambda: buffers.result()[name]

        written = write_model_files(weights, tmp, produce, job.provenance, job.progress)
        buffers.result()  # its error, had it one, even if no file holds an edited tensor
    card.write(job, tmp, "transformers", "a full model directory (Hugging Face format)")
    return ExportReport(job.commit, str(job.target), len(weights.specs()), len(edited), written)


register(ExportFormat("hf", "the whole model as a Hugging Face directory", {}, write))
