"""The lifelong-editing benchmark: T edits in sequential batches of B, per method.

Every batch is a real commit in a real repository: each method runs on its own branch
from the root commit, so the base statistics and context templates are shared and the
result is a history anyone can inspect (`nmkevc log --stat`, `nmkevc eval --rev`).
After every batch the model is evaluated on all edits so far (efficacy, generalisation,
specificity; optionally only every k-th batch, since that evaluation grows with the run),
on the first batch alone (retention, i.e. forgetting), on held-out perplexity and on the
n-gram entropy of fixed greedy generations (fluency); wall time and stored bytes are
recorded. The unedited model is measured once per run on the same probes (its
specificity per case, perplexity, fluency), so every point can be read against it.

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
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..editing.hparams import parse_arm
from ..errors import NmkevcError
from ..facts import EditRequest
from ..models.live import ModelState
from ..storage.fsutil import atomic_write_text
from .fluency import generation_entropy
from .metrics import evaluate_requests
from .neighbours import UNTOUCHED, neighbour_kinds, says_neighbours, share_by_kind, specificity_by_kind


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
    """The figures after one batch of one method. Fields after `commit` were added later:
    a checkpoint written before them loads with None there, so a run in progress resumes."""

    method: str
    edits: int
    #: wall time of the edit (the commit), evaluation excluded
    seconds: float
    stored_bytes: int
    #: over all edits so far; None at a batch where only retention was evaluated (`eval_every`)
    efficacy: float | None
    generalization: float | None
    specificity: float | None
    #: efficacy of the first edits (`retention_edits`) on the current model (forgetting = its drop)
    retention: float | None
    perplexity: float | None
    perplexity_change: float | None
    mean_mask_fraction: float | None
    commit: str
    #: n-gram entropy of greedy generations from fixed prompts (run.info["fluency"] says which)
    fluency: float | None = None
    #: the unedited model's specificity on the same neighbourhood prompts (those of the first `edits` cases)
    base_specificity: float | None = None
    #: wall time of this batch's evaluation (metrics, perplexity, fluency)
    eval_seconds: float | None = None
    #: specificity over the neighbourhood prompts whose subject no edit so far touched (per prompt:
    #: `evaluation.neighbours`), and the unedited model's on the same prompts; None where the cases do
    #: not say their neighbours' subjects, or the point was not fully evaluated
    specificity_untouched: float | None = None
    base_specificity_untouched: float | None = None


@dataclass
class LifelongRun:
    edits: int
    batch_size: int
    methods: list[str]
    points: list[BatchPoint] = field(default_factory=list)
    #: provenance and the unedited model's references (base_perplexity, base_fluency, base_cases, ...)
    info: dict = field(default_factory=dict)
    #: method → its branch in the repository (so a resumed run continues on it)
    branches: dict[str, str] = field(default_factory=dict)
    #: fingerprint of the cases, batch size, methods and overrides; a checkpoint of another run is refused
    fingerprint: str = ""

    def final(self) -> dict[str, BatchPoint]:
        out: dict[str, BatchPoint] = {}
        for p in self.points:
            out[p.method] = p
        return out

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

    def points_of(self, method: str) -> list[BatchPoint]:
        return [p for p in self.points if p.method == method]

    def progress(self) -> dict[str, int]:
        """Edits done so far per method."""
        return {m: (pts[-1].edits if (pts := self.points_of(m)) else 0) for m in self.methods}


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


#: run.info keys that describe how one group of methods was run (kept per method when runs merge)
PROVENANCE_KEYS = ("command", "date", "torch", "machine", "sessions")


def provenance(run: LifelongRun, method: str) -> dict:
    """How `method`'s points of `run` were produced: the command, date, machine, sessions."""
    merged = (run.info.get("provenance") or {}).get(method)
    if merged is not None:
        return merged
    return {k: run.info[k] for k in PROVENANCE_KEYS if k in run.info}


def merge_runs(earlier: LifelongRun, run: LifelongRun, cases: list, overrides: dict | None) -> LifelongRun:
    """`run` joined with the methods of `earlier` (published results of the same facts,
    batching and overrides) that it does not run itself.

    Why: a checkpoint resumes a run only on a machine that keeps its files. Where sessions
    start on a fresh machine, each session runs one method to the end instead, and the
    committed results.json gathers them. A method of `run` replaces all of its points in
    `earlier`: a method started again from its first batch is a new measurement, not a
    continuation. Each method keeps its own provenance (command, date, machine, sessions)."""
    if (earlier.edits, earlier.batch_size) != (run.edits, run.batch_size) or \
            earlier.fingerprint != run_fingerprint(cases, run.batch_size, earlier.methods, overrides):
        raise NmkevcError("the published results belong to another run (other facts, batch size or "
                          "hyperparameters); choose another results directory or delete them")
    if run.fingerprint and run.fingerprint != run_fingerprint(cases, run.batch_size, run.methods, overrides):
        raise NmkevcError("the results to merge belong to another run (other facts, batch size or hyperparameters)")
    kept = [m for m in earlier.methods if m not in run.methods]
    if not kept:
        return run
    if earlier.info.get("fluency") and run.info.get("fluency") and earlier.info["fluency"] != run.info["fluency"]:
        raise NmkevcError("the published results measured fluency with other settings (prompts, tokens); "
                          "they cannot share a table with this run")
    if retention_edits(earlier) != retention_edits(run):
        raise NmkevcError(f"the published results measured retention on the first {retention_edits(earlier)} "
                          f"edits, this run on the first {retention_edits(run)}; they cannot share a table")
    methods = [m for m in earlier.methods if m in kept or m in run.methods]
    methods += [m for m in run.methods if m not in methods]
    order = {m: i for i, m in enumerate(methods)}
    points = [p for p in earlier.points if p.method in kept] + list(run.points)
    points.sort(key=lambda p: (p.edits, order[p.method]))
    info = {k: v for k, v in run.info.items() if k not in PROVENANCE_KEYS}
    info["provenance"] = {m: provenance(run if m in run.methods else earlier, m) for m in methods}
    info["hparams"] = {m: ((run if m in run.methods else earlier).info.get("hparams") or {}).get(m)
                       for m in methods}
    info["hparams"] = {m: h for m, h in info["hparams"].items() if h is not None}
    old_base = (earlier.info.get("base_cases") or {}).get("efficacy") or []
    if len(old_base) > len((info.get("base_cases") or {}).get("efficacy") or []):
        info["base_cases"] = earlier.info["base_cases"]
    branches = {m: b for m, b in {**earlier.branches, **run.branches}.items() if m in methods}
    return LifelongRun(run.edits, run.batch_size, methods, points, info, branches,
                       run_fingerprint(cases, run.batch_size, methods, overrides))


#: what `fluency_prompts` / `fluency_tokens` measure, recorded in run.info["fluency"]
FLUENCY_SCORE = ("mean over the prompts of ROME's weighted n-gram entropy (2/3·H2 + 4/3·H3)/2 in bits, "
                 "word n-grams of prompt + greedy continuation")


def fluency_setting(cases: list, prompts: int, max_new_tokens: int) -> dict | None:
    """The fixed fluency probe: the rewrite prompts of the first `prompts` cases (subjects
    edited from the first batch on), greedy, `max_new_tokens` each; None when disabled."""
    if prompts <= 0:
        return None
    return {"prompts": [_request(c).text for c in cases[:prompts]], "max_new_tokens": max_new_tokens,
            "decoding": "greedy", "score": FLUENCY_SCORE}


#: retention is the efficacy of the first this many edits (issue #21's goal), whatever the batch size
RETENTION_EDITS = 100


def retention_edits(run: LifelongRun) -> int:
    """How many first edits a run's retention covers, as recorded in run.info. A run that records
    nothing: if it has points, it was measured before the record existed, when retention meant
    the first batch (its batch size); if not, it is about to start, with RETENTION_EDITS."""
    return int(run.info.get("retention_edits", run.batch_size if run.points else RETENTION_EDITS))


def measurement_due(b: int, n_batches: int, measure_every: int, eval_every: int) -> bool:
    """Whether batch b (0-based) measures retention, perplexity and fluency: every
    `measure_every`-th batch and at every full evaluation (so the first and the last)."""
    return (b + 1) % measure_every == 0 or full_evaluation_due(b, n_batches, eval_every)


def full_evaluation_due(b: int, n_batches: int, eval_every: int) -> bool:
    """Whether batch `b` (0-based) is evaluated on all edits so far: the first, every
    `eval_every`-th and the last (the others may measure retention: `measurement_due`)."""
    return b == 0 or (b + 1) % eval_every == 0 or b == n_batches - 1


def schedule(methods: Sequence[str], n_batches: int, interleave: bool) -> list[tuple[str, int]]:
    """(method, batch index) in the order they run: method by method, or batch by batch
    across methods (so a run stopped part-way compares every method at the same T)."""
    if interleave:
        return [(m, b) for b in range(n_batches) for m in methods]
    return [(m, b) for m in methods for b in range(n_batches)]


def _mean(xs: list) -> float | None:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def base_mean(run: LifelongRun, metric: str, edits: int) -> float | None:
    """The unedited model's `metric` over the first `edits` cases, aggregated as
    `EvalReport` does (mean over the cases where it is defined)."""
    values = (run.info.get("base_cases") or {}).get(metric) or []
    if len(values) < edits:
        return None
    return _mean(values[:edits])


#: what the checkpoint keeps of the unedited model per case ("neighbours": each neighbourhood
#: prompt's outcome, for the specificity of the untouched neighbours)
BASE_CASE_KEYS = ("efficacy", "generalization", "specificity", "neighbours")


def _extend_base(repo: EditingRepository, root: str, run: LifelongRun, cases: list, upto: int) -> None:
    """Score the unedited model on cases up to `upto` (once per case, kept in the checkpoint); a
    checkpoint from before a key existed gets that key's values from its first case on."""
    have = run.info.setdefault("base_cases", {})
    for key in BASE_CASE_KEYS:
        have.setdefault(key, [])
    n = min(len(have[key]) for key in BASE_CASE_KEYS)
    if n >= upto:
        return
    state = repo.load_model(root)
    rep = evaluate_requests(state.model, state.tokenizer, cases[n:upto])
    for i, r in enumerate(rep.records, start=n):
        values = (r.efficacy, r.generalization, r.specificity, [p.success for p in r.neighborhood])
        for key, value in zip(BASE_CASE_KEYS, values, strict=True):
            if len(have[key]) == i:
                have[key].append(value)


def untouched_specificity(run: LifelongRun, done: list, rep) -> tuple[float | None, float | None]:
    """Specificity of the neighbours no edit of `done` touched, after the edits (`rep`, the
    evaluation of `done`) and on the unedited model; (None, None) when the cases cannot say."""
    base = (run.info.get("base_cases") or {}).get("neighbours") or []
    if rep is None or len(base) < len(done) or not says_neighbours(done):
        return None, None
    kinds = neighbour_kinds(done, done)
    after = specificity_by_kind(rep, kinds)[UNTOUCHED]
    before = share_by_kind(base[: len(done)], kinds)[UNTOUCHED]
    return after["specificity"], before["specificity"]


def _eta_seconds(run: LifelongRun, n_batches: int) -> float | None:
    """Batches left times each method's mean batch time so far (all methods' mean for one
    not started yet): an underestimate, since the evaluation grows with the number of edits."""
    def mean_time(pts: list[BatchPoint]) -> float | None:
        return _mean([p.seconds + p.eval_seconds for p in pts if p.eval_seconds is not None])

    overall = mean_time(run.points)
    total = 0.0
    for m in run.methods:
        pts = run.points_of(m)
        left = n_batches - len(pts)
        per = mean_time(pts) or overall
        if left and per is None:
            return None
        total += left * (per or 0.0)
    return total


def _next_batch_seconds(run: LifelongRun, method: str) -> float:
    """The method's last batch time (edit and evaluation), or any method's; 0 if none yet."""
    for pts in (run.points_of(method), run.points):
        timed = [p for p in pts if p.eval_seconds is not None]
        if timed:
            return timed[-1].seconds + timed[-1].eval_seconds
    return 0.0


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    h, m = divmod(int(seconds) // 60, 60)
    return f"{h}h{m:02d}m"


def run_lifelong(
    repo: EditingRepository,
    cases: list,
    batch_size: int,
    methods: Sequence[str],
    perplexity_every: int = 1,
    log: Callable[[str], None] = print,
    hparams_overrides: dict | None = None,
    checkpoint: Path | None = None,
    eval_every: int = 1,
    interleave: bool = False,
    measure_every: int = 1,
    fluency_prompts: int = 5,
    fluency_tokens: int = 50,
    info: dict | None = None,
    on_batch: Callable[[LifelongRun], None] | None = None,
    deadline: float | None = None,
) -> LifelongRun:
    """Run the benchmark on `cases` (EditRequests, or EvalCases carrying per-neighbour answers)
    for each of `methods` (names of the editing registry, or arms 'method:key=value' that
    set hyperparameters of one method: `parse_arm`); with `checkpoint`, save after every
    batch and resume from what the file holds.

    `eval_every` k > 1 evaluates all edits so far only every k-th batch (and the first and
    last); `measure_every` k > 1 measures retention (efficacy of the first RETENTION_EDITS edits),
    perplexity and fluency only every k-th batch and at those full evaluations (the other
    points hold None: for runs of many small batches). `interleave` runs the methods batch by
    batch. None of them changes the figures, so none is part of the fingerprint: a run may
    resume with other values. `info` is merged into run.info (e.g. the
    command that reproduces the run); `on_batch` is called after every checkpoint. With
    `deadline` (a time.time() value) no batch is started that would, at the method's last
    batch time, end after it: a session that ends on time loses no work."""
    methods = tuple(methods)
    if batch_size < 1:
        raise NmkevcError("batch size must be at least 1")
    for what, k in (("evaluating", eval_every), ("measuring", measure_every)):
        if k < 1:
            raise NmkevcError(f"{what} every {k} batches: it must be at least 1")
    fingerprint = run_fingerprint(cases, batch_size, methods, hparams_overrides)
    run = load_checkpoint(checkpoint, fingerprint) if checkpoint else None
    if run is None:
        run = LifelongRun(len(cases), batch_size, list(methods), fingerprint=fingerprint)
    elif run.points:
        done = ", ".join(f"{m} {e}/{len(cases)}" for m, e in run.progress().items())
        log(f"resuming from {checkpoint}: {done} edits")
    run.info.update(info or {})
    fluency = fluency_setting(cases, fluency_prompts, fluency_tokens)
    if "fluency" in run.info and run.info["fluency"] != fluency:
        raise NmkevcError("this run was started with other fluency settings (prompts, tokens); "
                          "use the same ones or another checkpoint")
    run.info["fluency"] = fluency
    n_batches = -(-len(cases) // batch_size)
    t_session = time.time()
    session = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "edits_at_start": run.progress(),
               "eval_every": eval_every, "measure_every": measure_every, "interleave": interleave,
               "batches": 0, "seconds": 0.0}
    run.info.setdefault("sessions", []).append(session)

    root = repo.resolve("HEAD")
    while repo.commit(root).parents:  # the root of HEAD's first-parent line
        root = repo.commit(root).parents[0]
    run.info["retention_edits"] = retention_edits(run)  # a checkpoint from before the record keeps its own
    first = cases[: run.info["retention_edits"]]
    # the unedited model's references, measured once per run (and for points of a checkpoint
    # written before they existed)
    if perplexity_every and "base_perplexity" not in run.info:
        run.info["base_perplexity"] = repo.perplexity(root)["base"]
    base_ppl = run.info.get("base_perplexity")
    if fluency and "base_fluency" not in run.info:
        state = repo.load_model(root)
        run.info["base_fluency"] = round(generation_entropy(state.model, state.tokenizer, fluency["prompts"],
                                                            fluency_tokens), 4)
    _extend_base(repo, root, run, cases, max(run.progress().values(), default=0))
    for p in run.points:
        if p.base_specificity is None:
            p.base_specificity = base_mean(run, "specificity", p.edits)

    done_edits, stored = {}, {}
    for method in methods:
        done_points = run.points_of(method)
        branch = run.branches.get(method) or f"lifelong-{re.sub(r'[^A-Za-z0-9._-]+', '-', method)}-{int(time.time())}"
        resume_at = done_points[-1].commit if done_points else root
        if branch not in repo.branches() or repo.branches()[branch] != resume_at:
            repo.branch(branch, resume_at, force=True)  # new, or set back past an unsaved batch
        run.branches[method] = branch
        done_edits[method] = done_points[-1].edits if done_points else 0
        stored[method] = done_points[-1].stored_bytes if done_points else 0
    if checkpoint:
        save_checkpoint(run, checkpoint)

    current = None
    for method, b in schedule(methods, n_batches, interleave):
        start = b * batch_size
        if start < done_edits[method]:
            continue
        if deadline is not None and time.time() + _next_batch_seconds(run, method) > deadline:
            log(f"stopping before {method}'s batch at {start} edits: it would end after the deadline "
                f"(run the same command again to resume)")
            break
        if current != method:
            repo.switch(run.branches[method])
            current = method
        batch = cases[start : start + batch_size]
        t0 = time.time()
        message = f"lifelong {method}: edits {start}..{start + len(batch) - 1}"
        name, arm = parse_arm(method)
        out = repo.edit([_request(c) for c in batch], method=name, message=message,
                        **{**(hparams_overrides or {}), **arm})
        seconds = time.time() - t0
        stored[method] += out.stored_bytes
        # the hyperparameters as the commit stores them (model-dependent defaults resolved)
        run.info.setdefault("hparams", {})[method] = (repo.commit(out.commit).method or {}).get("hparams")
        done = cases[: start + len(batch)]
        done_edits[method] = len(done)

        t1 = time.time()
        full = full_evaluation_due(b, n_batches, eval_every)
        measure = measurement_due(b, n_batches, measure_every, eval_every)
        if full:
            _extend_base(repo, root, run, cases, len(done))
        state = repo.load_model(out.commit)
        rep = retention = flu = ppl = None
        if full:
            rep = evaluate_requests(state.model, state.tokenizer, done)
            retention = _mean([r.efficacy for r in rep.records[: len(first)]])
        elif measure:
            retention = evaluate_requests(state.model, state.tokenizer, first[: len(done)]).efficacy
        if fluency and measure:
            flu = round(generation_entropy(state.model, state.tokenizer, fluency["prompts"], fluency_tokens), 4)
        if measure and perplexity_every and (b % perplexity_every == 0 or b == n_batches - 1):
            ppl = repo.perplexity(out.commit, base_ppl=base_ppl)
        fractions = [x["neurons"] / x["d_ff"] for x in out.layers]
        untouched, base_untouched = untouched_specificity(run, done, rep)
        point = BatchPoint(
            method=method, edits=len(done), seconds=round(seconds, 3), stored_bytes=stored[method],
            efficacy=rep.efficacy if rep else None, generalization=rep.generalization if rep else None,
            specificity=rep.specificity if rep else None, retention=retention,
            perplexity=ppl["model"] if ppl else None, perplexity_change=ppl["relative"] if ppl else None,
            mean_mask_fraction=round(sum(fractions) / len(fractions), 4) if fractions else None,
            commit=out.commit, fluency=flu,
            base_specificity=base_mean(run, "specificity", len(done)) if rep else None,
            eval_seconds=round(time.time() - t1, 3),
            specificity_untouched=untouched, base_specificity_untouched=base_untouched,
        )
        run.points.append(point)
        session["batches"] += 1
        session["seconds"] = round(time.time() - t_session, 1)
        if checkpoint:
            save_checkpoint(run, checkpoint)
        if on_batch:
            on_batch(run)
        spec = f"spec {_f(point.specificity)} (base {_f(point.base_specificity)})" if rep else "spec   -  "
        if untouched is not None:
            spec += f", untouched {_f(untouched)} (base {_f(base_untouched)})"
        left = sum(n_batches - len(run.points_of(m)) for m in methods)
        log(f"{method:>9} {point.edits:>5}/{len(cases)} edits  eff {_f(point.efficacy)}  "
            f"gen {_f(point.generalization)}  {spec}  ret {_f(point.retention)}  "
            f"ppl {_f(point.perplexity_change, '+.2%')}  flu {_f(point.fluency, '.2f')}  "
            f"mask {_f(point.mean_mask_fraction)}  edit {seconds:.0f}s + eval {point.eval_seconds:.0f}s  "
            f"| {left} batch(es) left, ETA ~{_duration(_eta_seconds(run, n_batches))}")
    return run


def _f(x, fmt: str = ".3f") -> str:
    return "  -  " if x is None else format(x, fmt)
