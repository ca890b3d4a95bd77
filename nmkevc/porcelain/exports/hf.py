"""`export --format hf`: the model at a commit as a standard Hugging Face directory.

The base's files are copied file to file (no tensor is built for the untouched ones);
only edited weights are computed, or read from the materialised cache, which needs no
torch at all, on another thread while the copy runs, and written over their places last.
The directory layout is the model layer's (models.hf_dir).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from ...models.hf_dir import write_model_files
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
    # the edited weights are read and summed on another thread (file reads, decompression,
    # hashing and numpy release the GIL) while the base's files are copied whole and flushed;
    # they are written over their places last
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(bench.materialised_buffers, job.base, job.provenance["effective_set"], weights)

        def edited() -> dict:
            return {weights.resolve(name): buf for name, buf in pending.result().items()}

        written = write_model_files(weights, tmp, lambda spec: weights.byte_range(spec.name), job.provenance,
                                    job.progress, late=edited)
        count = len(pending.result())
    card.write(job, tmp, "transformers", "a full model directory (Hugging Face format)")
    return ExportReport(job.commit, str(job.target), len(weights.specs()), count, written)


register(ExportFormat("hf", "the whole model as a Hugging Face directory", {}, write))
