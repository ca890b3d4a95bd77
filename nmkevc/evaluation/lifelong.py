"""The lifelong-editing benchmark: T edits in sequential batches of B, per method.

Every batch is a real commit in a real repository: each method runs on its own branch
from the root commit, so the base statistics and context templates are shared and the
result is a history anyone can inspect (`nmkevc log --stat`, `nmkevc eval --rev`).
After every batch the model is evaluated on all edits so far (efficacy, generalisation,
specificity), on the first batch alone (retention, i.e. forgetting), and on held-out
perplexity; wall time and stored bytes are recorded.

The harness drives a repository through its public verbs (`EditingRepository`, which
`nmkevc.Repository` satisfies) and measures with this layer's metrics; it imports
nothing above evaluation.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..facts import EditRequest
from ..models.live import ModelState
from .metrics import evaluate_requests


class EditingRepository(Protocol):
    """The verbs the harness drives (`nmkevc.Repository` has them)."""

    def resolve(self, rev: str = "HEAD") -> str: ...

    def commit(self, rev: str = "HEAD") -> Any: ...  # .parents

    def branch(self, name: str, start: str = "HEAD") -> str: ...

    def switch(self, target: str) -> str: ...

    def edit(self, requests: list[EditRequest], method: str | None = None, message: str | None = None,
             **overrides) -> Any: ...  # .commit, .stored_bytes, .layers

    def load_model(self, rev: str = "HEAD") -> ModelState: ...

    def perplexity(self, rev: str = "HEAD", base_ppl: float | None = None) -> dict: ...


@dataclass
class BatchPoint:
    method: str
    edits: int
    seconds: float
    stored_bytes: int
    efficacy: float | None
    generalization: float | None
    specificity: float | None
    retention: float | None
    perplexity: float | None
    perplexity_change: float | None
    mean_mask_fraction: float | None
    commit: str


@dataclass
class LifelongRun:
    edits: int
    batch_size: int
    methods: list[str]
    points: list[BatchPoint] = field(default_factory=list)
    info: dict = field(default_factory=dict)

    def final(self) -> dict[str, BatchPoint]:
        out: dict[str, BatchPoint] = {}
        for p in self.points:
            out[p.method] = p
        return out

    def to_json(self) -> dict:
        return {"edits": self.edits, "batch_size": self.batch_size, "methods": self.methods,
                "info": self.info, "points": [asdict(p) for p in self.points]}


def _request(case) -> EditRequest:
    return case if isinstance(case, EditRequest) else case.request


def run_lifelong(
    repo: EditingRepository,
    cases: list,
    batch_size: int,
    methods: Sequence[str],
    perplexity_every: int = 1,
    log: Callable[[str], None] = print,
    hparams_overrides: dict | None = None,
) -> LifelongRun:
    """Run the benchmark on `cases` (EditRequests, or EvalCases carrying per-neighbour answers)
    for each of `methods` (names of the editing registry)."""
    methods = tuple(methods)
    root = repo.resolve("HEAD")
    while repo.commit(root).parents:  # the root of HEAD's first-parent line
        root = repo.commit(root).parents[0]
    run = LifelongRun(len(cases), batch_size, list(methods))
    first = cases[:batch_size]
    base_ppl = repo.perplexity(root)["base"] if perplexity_every else None
    for method in methods:
        branch = f"lifelong-{method}-{int(time.time())}"
        repo.branch(branch, root)
        repo.switch(branch)
        done: list = []
        stored = 0
        for b, start in enumerate(range(0, len(cases), batch_size)):
            batch = cases[start : start + batch_size]
            t0 = time.time()
            message = f"lifelong {method}: edits {start}..{start + len(batch) - 1}"
            out = repo.edit([_request(c) for c in batch], method=method, message=message,
                            **(hparams_overrides or {}))
            seconds = time.time() - t0
            stored += out.stored_bytes
            done.extend(batch)
            state = repo.load_model(out.commit)
            rep = evaluate_requests(state.model, state.tokenizer, done)
            ret = evaluate_requests(state.model, state.tokenizer, first)
            ppl = None
            if perplexity_every and (b % perplexity_every == 0 or start + batch_size >= len(cases)):
                ppl = repo.perplexity(out.commit, base_ppl=base_ppl)
            fractions = [x["neurons"] / x["d_ff"] for x in out.layers]
            point = BatchPoint(
                method=method, edits=len(done), seconds=round(seconds, 3), stored_bytes=stored,
                efficacy=rep.efficacy, generalization=rep.generalization, specificity=rep.specificity,
                retention=ret.efficacy, perplexity=ppl["model"] if ppl else None,
                perplexity_change=ppl["relative"] if ppl else None,
                mean_mask_fraction=round(sum(fractions) / len(fractions), 4) if fractions else None,
                commit=out.commit,
            )
            run.points.append(point)
            log(f"{method:>9} {point.edits:>5} edits  eff {_f(point.efficacy)}  gen {_f(point.generalization)}  "
                f"spec {_f(point.specificity)}  ret {_f(point.retention)}  ppl {_f(point.perplexity_change, '+.2%')}"
                f"  mask {_f(point.mean_mask_fraction)}  {seconds:.1f}s")
    return run


def _f(x, fmt: str = ".3f") -> str:
    return "  -  " if x is None else format(x, fmt)


def write_outputs(run: LifelongRun, out_dir: Path) -> list[Path]:
    """results.json and one PNG per metric (metric vs number of edits, a line per method)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "results.json"]
    paths[0].write_text(json.dumps(run.to_json(), indent=2) + "\n", "utf-8")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return paths
    metrics = ("efficacy", "generalization", "specificity", "retention", "perplexity_change", "seconds")
    for metric in metrics:
        fig, ax = plt.subplots(figsize=(5, 3.4))
        for method in run.methods:
            pts = [p for p in run.points if p.method == method and getattr(p, metric) is not None]
            ax.plot([p.edits for p in pts], [getattr(p, metric) for p in pts], marker="o", label=method)
        ax.set_xlabel("edits")
        ax.set_ylabel(metric.replace("_", " "))
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        p = out_dir / f"{metric}.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths


def markdown_table(run: LifelongRun) -> str:
    """The per-batch figures as a Markdown table (for docs/results.md)."""
    rows = ["| method | edits | efficacy | generalisation | specificity | retention (1st batch) | "
            "perplexity change | mask fraction | s/batch | stored MiB |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for p in run.points:
        rows.append(
            f"| {p.method} | {p.edits} | {_f(p.efficacy)} | {_f(p.generalization)} | {_f(p.specificity)} | "
            f"{_f(p.retention)} | {_f(p.perplexity_change, '+.2%')} | {_f(p.mean_mask_fraction)} | "
            f"{p.seconds:.0f} | {p.stored_bytes / 2**20:.2f} |"
        )
    return "\n".join(rows)
