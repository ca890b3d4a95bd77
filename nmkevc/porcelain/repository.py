"""`nmkevc.Repository`: the Python API, equal in power to the CLI (which only calls it).

The facade *composes* the storage-level `Repo` and the model `Workbench` over it rather
than inheriting from them (as dulwich's porcelain works over a repo object): its public
surface is the verbs and the read-only views below, and nothing of the object store,
refs or caches leaks into it. Both stay reachable, explicitly, as `Repository.plumbing`
and `Repository.workbench`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..bases import BaseSource, parse_base_argument
from ..errors import EditRequestError
from ..facts import EditRequest
from ..history.commit import Commit
from ..models.runtime import Runtime
from ..repo.repository import Head, LockHolder, ReflogEntry, Repo
from ..workbench import Workbench
from . import branching

if TYPE_CHECKING:
    from ..deltas.delta import Delta
    from ..models.live import ModelState
    from . import answers, describe, edit, evaluate, exports, maintenance, merging, sharing, view

# Each verb imports the porcelain module it calls: most of them need torch (~1 s to import),
# and a verb that only moves refs (checkout, switch, branch, tag) should not pay for it.

Progress = Callable[[int, int], None] | None


class Repository:
    """A repository with every verb. Open with `Repository.open(path)` or `Repository.init(...)`."""

    def __init__(self, repo: Repo, bench: Workbench | None = None):
        self._repo = repo
        self._bench = bench or Workbench(repo)

    @classmethod
    def open(cls, path: str | Path = ".", wait: float | None = None,
             on_lock_wait: Callable[[LockHolder], None] | None = None,
             device: str | None = None, dtype: str | None = None) -> Repository:
        """`wait`: seconds a writing verb waits for a busy lock (None: the config's
        `lock_wait`, default 0 = refuse at once; math.inf = no limit); `on_lock_wait`
        is told who holds the lock when the wait begins; `device` / `dtype` override the
        repository's defaults (chosen at init) for this object."""
        repo = Repo.open(path, wait=wait, on_lock_wait=on_lock_wait)
        bench = Workbench(repo)
        if device is not None or dtype is not None:
            bench.runtime = Runtime(device or bench.runtime.device, dtype or bench.runtime.dtype)
        return cls(repo, bench)

    @classmethod
    def init(cls, path: str | Path = ".", base: str | BaseSource | None = None,
             progress: Progress = None, branch: str = "main", device: str | None = None,
             dtype: str | None = None) -> Repository:
        """`device` / `dtype` become the repository's defaults for every command that runs the model."""
        source = base if isinstance(base, BaseSource) else parse_base_argument(base)
        runtime = Runtime(device or "cpu", dtype or "float32") if device or dtype else None
        if device:  # a default the machine cannot honour is refused now, not at the first edit
            runtime.placement()
        bench = Workbench.create(path, source, progress=progress, branch=branch, runtime=runtime)
        return cls(bench.repo, bench)

    # -- where and what ------------------------------------------------------------------
    @property
    def plumbing(self) -> Repo:
        """The storage-level repository (objects, refs, lock, caches, history), for tools
        that need more than the verbs. Its interface may change between versions."""
        return self._repo

    @property
    def workbench(self) -> Workbench:
        """The repository's models (bases, live and base models, materialised states,
        statistics), for tools that need more than the verbs. Its interface may change
        between versions."""
        return self._bench

    @property
    def root(self) -> Path:
        """The directory the repository lives in (its `.nmkevc` is `dir`)."""
        return self._repo.root

    @property
    def dir(self) -> Path:
        return self._repo.dir

    def __repr__(self) -> str:
        return f"Repository({str(self.root)!r})"

    def resolve(self, rev: str = "HEAD") -> str:
        """The full commit id of a revision (HEAD, branch, tag, id prefix, ~N, ^N)."""
        return self._repo.resolve(rev)

    def commit(self, rev: str = "HEAD") -> Commit:
        """The commit record of a revision (immutable)."""
        return self._repo.commit(self._repo.resolve(rev))

    def head(self) -> Head:
        return self._repo.head()

    def effective(self, rev: str = "HEAD") -> list[str]:
        """The commits whose deltas are in effect at rev, in canonical order."""
        return self._repo.effective(self._repo.resolve(rev))

    # -- history views -------------------------------------------------------------------
    def log(self, rev: str = "HEAD", max_count: int | None = None, stat: bool = False):
        from . import describe

        return describe.log(self._repo, rev, max_count, stat)

    def log_graph(self, rev: str = "HEAD", max_count: int | None = None, stat: bool = False):
        """`log` with each commit's row of the graph drawing: [(CommitInfo, GraphRow)]."""
        from . import describe

        return describe.log_graph(self._repo, rev, max_count, stat)

    def show(self, rev: str = "HEAD") -> describe.CommitInfo:
        from . import describe

        return describe.commit_info(self._repo, self._repo.resolve(rev), stat=True)

    def diff(self, a: str, b: str = "HEAD") -> describe.DiffReport:
        from . import describe

        return describe.diff(self._repo, a, b)

    def status(self) -> describe.Status:
        from . import describe

        return describe.status(self._repo)

    def view(self, rev: str = "HEAD", output: str | Path | None = None,
             mask_threshold: float | None = None) -> view.ViewReport:
        """The history of `rev` (or `A..B`, or `A...B` with B's merge into A scored) as one
        self-contained HTML page, written to `output`; the report carries the page's data."""
        from ..deltas.measure import DEFAULT_MASK_THRESHOLD
        from . import view

        threshold = DEFAULT_MASK_THRESHOLD if mask_threshold is None else mask_threshold
        return view.write_view(self._repo, rev, output, threshold)

    def facts(self, rev: str = "HEAD") -> list[tuple[str, EditRequest]]:
        from . import describe

        return [(c, EditRequest.from_json(r)) for c, r in describe.facts_at(self._repo, self._repo.resolve(rev))]

    def reflog(self, ref: str = "HEAD", max_count: int | None = None) -> list[ReflogEntry]:
        return branching.reflog(self._repo, ref, max_count)

    # -- branches and tags ---------------------------------------------------------------
    def branches(self) -> dict[str, str]:
        return self._repo.branches()

    def branch(self, name: str, start: str = "HEAD", force: bool = False) -> str:
        return branching.create_branch(self._repo, name, start, force)

    def delete_branch(self, name: str, force: bool = False) -> str | None:
        """Delete a branch; returns the commit it pointed at (None if its ref was corrupt)."""
        return branching.delete_branch(self._repo, name, force)

    def switch(self, target: str, create: bool = False, detach: bool = False) -> str:
        return branching.switch(self._repo, target, create, detach)

    def switch_orphan(self, name: str, base_id: str | None = None) -> str:
        """A new branch with its own root commit; `base_id` is a recorded base id or a unique prefix."""
        from . import maintenance

        base_id = maintenance.resolve_base_id(self._repo, base_id) if base_id else None
        return branching.switch_orphan(self._repo, name, base_id)

    def checkout(self, target: str, new_branch: str | None = None) -> branching.HeadMove:
        return branching.checkout(self._repo, target, new_branch)

    def tag(self, name: str, rev: str = "HEAD", force: bool = False) -> str:
        return branching.create_tag(self._repo, name, rev, force)

    def delete_tag(self, name: str) -> str | None:
        """Delete a tag; returns the commit it pointed at (None if its ref was corrupt)."""
        return branching.delete_tag(self._repo, name)

    def tags(self) -> dict[str, str]:
        return branching.tags(self._repo)

    # -- changes -------------------------------------------------------------------------
    def commit_delta(self, delta: Delta, message: str, requests=(), method=None, info=None) -> str:
        from . import changes

        return changes.commit_delta(self._repo, delta, message, requests, method, info)

    def revert(self, rev: str, message: str | None = None) -> str:
        from . import changes

        return changes.revert(self._repo, rev, message)

    def cherry_pick(self, rev: str, message: str | None = None) -> str:
        from . import changes

        return changes.cherry_pick(self._repo, rev, message)

    def merge(self, rev: str, strategy: str | None = None, message: str | None = None,
              no_ff: bool = False, allow_unrelated: bool = False,
              mask_threshold: float | None = None, functional: bool = True) -> merging.MergeReport:
        """Merge rev into HEAD; raises MergeConflictError (nothing changed) on unresolved conflicts.

        `mask_threshold` None = the default (docs/merging.md)."""
        from ..workbench import health
        from . import answers, edit, merging

        bench = self._bench
        kw = {} if mask_threshold is None else {"mask_threshold": mask_threshold}
        return merging.merge(
            self._repo, rev, strategy=strategy, message=message, no_ff=no_ff,
            allow_unrelated=allow_unrelated,
            functional_check=(lambda b, m, r: answers.functional_check(bench, b, m, r)) if functional else None,
            replay=lambda _r, b, keep, theirs: edit.replay(bench, b, keep, theirs),
            health=lambda b, commits, extra: health.state_health(bench, b, commits,
                                                                 health.recorded_sigmas(bench, commits), extra),
            **kw,
        )

    # -- editing -------------------------------------------------------------------------
    def edit(self, requests: EditRequest | list[EditRequest], method: str | None = None,
             message: str | None = None, hparams=None, corpus: str | Path | None = None,
             stats_tokens: int | None = None, progress=None, **overrides) -> edit.EditOutcome:
        """Teach the model at HEAD the requests (one batch, one commit).

        `hparams` is an EditHparams; keyword overrides (e.g. layers=[3, 4], or preset="published":
        `editing.hparams.PRESETS`) adjust a copy."""
        from ..editing import EditHparams
        from ..workbench.statistics import DEFAULT_STATS_TOKENS
        from . import edit

        reqs = [requests] if isinstance(requests, EditRequest) else list(requests)
        hp = hparams or EditHparams()
        if method is not None or overrides:
            hp = hp.updated(**overrides, **({} if method is None else {"method": method}))
        return edit.edit(self._bench, reqs, hp, message, self._bench.corpus(corpus) if corpus else None,
                         DEFAULT_STATS_TOKENS if stats_tokens is None else stats_tokens, progress)

    def edit_batches(self, requests: list[EditRequest], batch_size: int | None = None,
                     **kw) -> list[edit.EditOutcome]:
        """Sequential batches, one commit each (the lifelong-editing setting); None: one batch.

        Every request is checked before the first batch runs, so bad input commits nothing."""
        from ..workbench.statistics import DEFAULT_STATS_TOKENS
        from . import edit

        if batch_size is None:
            batch_size = max(1, len(requests))
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise EditRequestError(f"batch size must be at least 1, not {batch_size!r}")
        stats_tokens = kw.get("stats_tokens")
        edit.check_edit_input(self._bench, requests, DEFAULT_STATS_TOKENS if stats_tokens is None else stats_tokens)
        return [self.edit(requests[i : i + batch_size], **kw) for i in range(0, len(requests), batch_size)]

    def ask(self, prompt: str, rev: str = "HEAD", top_k: int = 5, max_new_tokens: int = 12) -> answers.Answer:
        from . import answers

        return answers.ask(self._bench, prompt, rev, top_k, max_new_tokens)

    def blame(self, prompt: str, rev: str = "HEAD") -> answers.BlameReport:
        from . import answers

        return answers.blame(self._bench, prompt, rev)

    def evaluate(self, rev: str = "HEAD", dataset: str | Path | None = None, perplexity: bool = True,
                 records: bool = False) -> evaluate.EvalResult:
        """Edit metrics at rev (its own facts, or a CounterFact / zsRE / edit file) and perplexity."""
        from . import evaluate

        return evaluate.evaluate(self._bench, rev, dataset, perplexity, records)

    def perplexity(self, rev: str = "HEAD", base_ppl: float | None = None) -> dict:
        """Held-out perplexity of the model at rev and of its base (pass `base_ppl` to reuse it)."""
        from . import evaluate

        cid = self._repo.resolve(rev)
        return evaluate.perplexity_change(self._bench, self._repo.commit(cid).base, self._repo.effective(cid),
                                          base_ppl=base_ppl)

    def lifelong(self, source: str | Path = "countryinfo", edits: int | None = 1000, batch_size: int = 100,
                 methods: list[str] | None = None, out_dir: str | Path | None = None, seed: int = 0,
                 neighbours: int = 5, split: str | None = "test", log=print, results_dir: str | Path | None = None,
                 eval_every: int = 1, interleave: bool = False, measure_every: int = 1,
                 info: dict | None = None, on_batch=None, deadline: float | None = None, **overrides):
        """The lifelong-editing benchmark: `edits` facts in sequential batches, per method, each
        method on its own branch; figures after every batch. With `out_dir`, a checkpoint is
        written there after every batch and a second call with the same arguments resumes;
        results.json, table.md and plots are written to `results_dir` (default `out_dir`)
        after every batch, so a run stopped part-way leaves its figures so far. Methods that
        results.json already holds and this call does not run are kept there (see
        `merge_runs`: one method per session on machines that keep no files).
        `eval_every`, `measure_every`, `interleave`, `deadline`: see `run_lifelong`; `info` is
        recorded in results.json."""
        from ..editing import EditHparams
        from ..editing.hparams import parse_arm
        from ..editing.registry import get_method, method_names
        from ..evaluation.lifelong import LifelongRun, merge_runs, run_lifelong
        from ..evaluation.lifelong_report import read_results, write_outputs
        from .datasets import eval_cases

        methods = list(methods) if methods else list(method_names())
        for m in methods:  # a bad method or setting fails now, not at its first batch
            name, arm = parse_arm(m)
            get_method(name)
            EditHparams().updated(**{**overrides, **arm, "method": name})
        cases = eval_cases(source, edits, seed=seed, neighbours=neighbours, split=split)
        checkpoint = Path(out_dir) / "checkpoint.json" if out_dir is not None else None
        publish = Path(results_dir) if results_dir is not None else (Path(out_dir) if out_dir is not None else None)

        earlier = read_results(publish) if publish is not None else None

        def published(run):
            return merge_runs(earlier, run, cases, overrides or None) if earlier is not None else run

        if earlier is not None:  # refuse results of other facts before the first batch, not after it
            published(LifelongRun(len(cases), batch_size, methods))

        def after_batch(run) -> None:
            merged = published(run)
            if publish is not None:
                write_outputs(merged, publish)
            if on_batch is not None:
                on_batch(merged)

        run = run_lifelong(self, cases, batch_size, methods, log=log, hparams_overrides=overrides or None,
                           checkpoint=checkpoint, eval_every=eval_every, interleave=interleave,
                           measure_every=measure_every,
                           info={"dataset": str(source), "seed": seed, "split": split, "neighbours": neighbours,
                                 **(info or {})},
                           on_batch=after_batch, deadline=deadline)
        merged = published(run)
        if publish is not None:
            write_outputs(merged, publish)
        return merged

    # -- models --------------------------------------------------------------------------
    def load_model(self, rev: str = "HEAD", progress: Progress = None) -> ModelState:
        """The model at rev (cached; moving between revisions rewrites only changed weights).

        A handle at that state: it refuses use (StaleModelError) once the repository has
        moved its shared model to another revision; load again to move it back."""
        return self._bench.model_at(self._repo.resolve(rev), progress=progress)

    def export(self, rev: str, out_dir: str | Path, progress: Progress = None, format: str = "hf",
               **options) -> exports.Report:
        """Write the revision in an export format (`export_formats()`): "hf" a Hugging Face model
        directory, "peft" a LoRA adapter of the change from the base (option `rank` truncates it);
        `out_dir` must be absent or empty, and appears whole or not at all."""
        from . import exports

        return exports.export(self._bench, rev, out_dir, format, progress, **options)

    def export_peft(self, rev: str, out_dir: str | Path, rank: int | None = None) -> exports.Report:
        """The change from the base to rev as a PEFT LoRA adapter (exact unless `rank` truncates)."""
        return self.export(rev, out_dir, format="peft", rank=rank)

    @staticmethod
    def export_formats() -> dict[str, str]:
        """{name: what it writes} of every registered export format."""
        from . import exports

        return {name: exports.get_format(name).summary for name in exports.format_names()}

    # -- sharing -------------------------------------------------------------------------
    @classmethod
    def clone(cls, url: str, directory: str | Path | None = None, origin: str = "origin",
              with_stats: bool = False, progress: Progress = None, parent: str | Path = ".") -> sharing.CloneReport:
        """Copy the repository at url (a path, any fsspec URL, or a bundle) into directory
        (default: a folder of `parent` named after the URL)."""
        from . import sharing

        return sharing.clone(url, directory, origin=origin, with_stats=with_stats, progress=progress,
                             parent=parent)

    def remote_branches(self) -> dict[str, str]:
        """{"<remote>/<branch>": commit} as last fetched or pushed."""
        return self._repo.remote_branches()

    def remotes(self) -> dict[str, str]:
        from . import sharing

        return sharing.list_remotes(self._repo)

    def add_remote(self, name: str, url: str) -> None:
        from . import sharing

        sharing.add_remote(self._repo, name, url)

    def remove_remote(self, name: str) -> None:
        from . import sharing

        sharing.remove_remote(self._repo, name)

    def fetch(self, remote: str | None = None, with_stats: bool = False, prune: bool = False,
              progress: Progress = None) -> sharing.TransferReport:
        from . import sharing

        return sharing.fetch(self._repo, remote, with_stats=with_stats, prune=prune, progress=progress)

    def pull(self, remote: str | None = None, branch: str | None = None, with_stats: bool = False,
             strategy: str | None = None, functional: bool = True,
             progress: Progress = None) -> sharing.PullReport:
        """fetch, then merge remote/branch into HEAD with the merge verb (and its checks)."""
        from . import sharing

        return sharing.pull(self._repo, lambda rev: self.merge(rev, strategy=strategy, functional=functional),
                            remote, branch, with_stats=with_stats, progress=progress)

    def push(self, remote: str | None = None, refs: list[str] | None = None, force: bool = False,
             with_stats: bool = False, progress: Progress = None) -> sharing.TransferReport:
        from . import sharing

        return sharing.push(self._repo, remote, refs, force=force, with_stats=with_stats, progress=progress)

    def bundle_create(self, path: str | Path, revs: list[str], progress: Progress = None) -> sharing.BundleReport:
        from . import sharing

        return sharing.create_bundle(self._repo, path, revs, progress=progress)

    @staticmethod
    def bundle_verify(path: str) -> sharing.BundleReport:
        from . import sharing

        return sharing.verify_bundle(path)

    # -- maintenance ---------------------------------------------------------------------
    def fsck(self, repair: bool = False, full: bool = False) -> maintenance.FsckReport:
        """Check everything; `repair` rebuilds what can be rebuilt, `full` rehashes the bases."""
        from . import maintenance

        return maintenance.fsck(self._repo, repair=repair, full=full, bench=self._bench)

    def warnings(self) -> list[str]:
        """Problems met and skipped while serving a command (e.g. a corrupt ref in a listing)."""
        return [f"{problem}; skipped" for _, problem in sorted(self._repo.refs.broken.items())]

    def gc(self) -> maintenance.GcReport:
        from . import maintenance

        return maintenance.gc(self._repo)

    def bases(self) -> list[maintenance.BaseInfo]:
        from . import maintenance

        return maintenance.bases(self._repo)

    def add_base(self, base: str | BaseSource) -> str:
        source = base if isinstance(base, BaseSource) else parse_base_argument(base)
        return self._bench.add_base(source)

    def relocate_base(self, base_id: str, location: str) -> None:
        """Point a recorded base (id or unique prefix) at a new location; content must match."""
        from . import maintenance

        self._bench.relocate_base(maintenance.resolve_base_id(self._repo, base_id), parse_base_argument(location))
