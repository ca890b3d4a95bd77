"""The lifelong-editing benchmark: T edits in sequential batches of B, per method.

Every batch is a real commit in a real repository: each method runs on its own branch
from the root commit, so the base statistics and context templates are shared and the
result is a history anyone can inspect (`nmkevc log --stat`, `nmkevc eval --rev`).
After every batch the model is evaluated on all edits so far (efficacy, generalisation,
specificity), on the first batch alone (retention, i.e. forgetting), and on held-out
perplexity; wall time and stored bytes are recorded.

A run of thousands of edits takes hours on a small machine, so it checkpoints: after
every batch the figures so far and each method's branch are written atomically to a
JSON file, and a run started again with the same checkpoint resumes where it stopped
(a branch that moved past its last checkpointed batch — a kill between the commit and
the checkpoint — is set back, so a kill costs at most one batch).

The harness drives a repository through its public verbs (`EditingRepository`, which
`nmkevc.Repository` satisfies) and measures with this layer's metrics; it imports
nothing above evaluation.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..errors import NmkevcError
from ..facts import EditRequest
from ..models.live import ModelState
from ..storage.fsutil import atomic_write_text
from .metrics import evaluate_requests


class EditingRepository(Protocol):
    """The verbs the harness drives (`nmkevc.Repository` has them)."""

    def resolve(self, rev: str = "HEAD") -> str: ...

    def commit(self, rev: str = "HEAD") -> Any: ...  # .parents

    def branch(self, name: str, start: str = "HEAD", force: bool = False) -> str: ...

    def branches(self) -> dict[str, str]: ...

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

    #: method → its branch in the repository (so a resumed run continues on it)
    branches: dict[str, str] = field(default_factory=dict)
    #: fingerprint of the cases, batch size, methods and overrides; a checkpoint of another run is refused
    fingerprint: str = ""

    def to_json(self) -> dict:
        return {"edits": self.edits, "batch_size": self.batch_size, "methods": self.methods,
                "info": self.info, "branches": self.branches, "fingerprint": self.fingerprint,
                "points": [asdict(p) for p in self.points]}

    @classmethod
    def from_json(cls, d: dict) -> LifelongRun:
        try:
            return cls(int(d["edits"]), int(d["batch_size"]), list(d["methods"]),
                       [BatchPoint(**p) for p in d["points"]], dict(d.get("info") or {}),
                       dict(d.get("branches") or {}), str(d.get("fingerprint") or ""))
        except (KeyError, TypeError, ValueError) as e:
            raise NmkevcError(f"the lifelong checkpoint is not readable ({e})") from None

    def table(self) -> str:
        return markdown_table(self)

    def points_of(self, method: str) -> list[BatchPoint]:
        return [p for p in self.points if p.method == method]


def _request(case) -> EditRequest:
    return case if isinstance(case, EditRequest) else case.request


def run_fingerprint(cases: list, batch_size: int, methods: Sequence[str], overrides: dict | None) -> str:
    """What makes two runs the same run: the requests in order, batching, methods, overrides."""
    payload = {"requests": [_request(c).to_json() for c in cases], "batch_size": batch_size,
               "methods": list(methods), "overrides": overrides or {}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def load_checkpoint(path: Path, fingerprint: str) -> LifelongRun | None:
    """The run saved at `path`, or None if there is none; refuses a checkpoint of another run."""
    try:
        data = json.loads(Path(path).read_text("utf-8"))
    except FileNotFoundError:
        return None
    except ValueError:
        raise NmkevcError(f"the lifelong checkpoint {path} is corrupt; delete it to start over") from None
    run = LifelongRun.from_json(data)
    if run.fingerprint != fingerprint:
        raise NmkevcError(f"the lifelong checkpoint {path} belongs to another run (other facts, batch size, "
                          "methods or hyperparameters); delete it or choose another --out")
    return run


def save_checkpoint(run: LifelongRun, path: Path) -> None:
    atomic_write_text(Path(path), json.dumps(run.to_json(), indent=1) + "\n")


def run_lifelong(
    repo: EditingRepository,
    cases: list,
    batch_size: int,
    methods: Sequence[str],
    perplexity_every: int = 1,
    log: Callable[[str], None] = print,
    hparams_overrides: dict | None = None,
    checkpoint: Path | None = None,
) -> LifelongRun:
    """Run the benchmark on `cases` (EditRequests, or EvalCases carrying per-neighbour answers)
    for each of `methods` (names of the editing registry); with `checkpoint`, save after every
    batch and resume from what the file holds."""
    methods = tuple(methods)
    if batch_size < 1:
        raise NmkevcError("batch size must be at least 1")
    fingerprint = run_fingerprint(cases, batch_size, methods, hparams_overrides)
    run = load_checkpoint(checkpoint, fingerprint) if checkpoint else None
    if run is None:
        run = LifelongRun(len(cases), batch_size, list(methods), fingerprint=fingerprint)
    elif run.points:
        log(f"resuming from {checkpoint}: {len(run.points)} batch(es) done")
    root = repo.resolve("HEAD")
    while repo.commit(root).parents:  # the root of HEAD's first-parent line
        root = repo.commit(root).parents[0]
    first = cases[:batch_size]
    if perplexity_every and "base_perplexity" not in run.info:
        run.info["base_perplexity"] = repo.perplexity(root)["base"]
    base_ppl = run.info.get("base_perplexity")
    for method in methods:
        done_points = run.points_of(method)
        branch = run.branches.get(method) or f"lifelong-{method}-{int(time.time())}"
        resume_at = done_points[-1].commit if done_points else root
        if branch not in repo.branches() or repo.branches()[branch] != resume_at:
            repo.branch(branch, resume_at, force=True)  # new, or set back past an unsaved batch
        repo.switch(branch)
        run.branches[method] = branch
        if checkpoint:
            save_checkpoint(run, checkpoint)
        done: list = list(cases[: done_points[-1].edits]) if done_points else []
        stored = done_points[-1].stored_bytes if done_points else 0
        for b, start in enumerate(range(0, len(cases), batch_size)):
            if start < len(done):
                continue
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
            if checkpoint:
                save_checkpoint(run, checkpoint)
            log(f"{method:>9} {point.edits:>5} edits  eff {_f(point.efficacy)}  gen {_f(point.generalization)}  "
                f"spec {_f(point.specificity)}  ret {_f(point.retention)}  ppl {_f(point.perplexity_change, '+.2%')}"
                f"  mask {_f(point.mean_mask_fraction)}  {seconds:.1f}s")
    return run


def _f(x, fmt: str = ".3f") -> str:
    return "  -  " if x is None else format(x, fmt)


def write_outputs(run: LifelongRun, out_dir: Path) -> list[Path]:
    """results.json, table.md and one PNG per metric (metric vs number of edits, a line per method)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "results.json", out_dir / "table.md"]
    atomic_write_text(paths[0], json.dumps(run.to_json(), indent=2) + "\n")
    atomic_write_text(paths[1], markdown_table(run) + "\n")
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
