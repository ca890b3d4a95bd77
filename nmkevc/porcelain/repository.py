"""`nmkevc.Repository`: the Python API, equal in power to the CLI (which only calls it)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..deltas.delta import Delta
from ..deltas.measure import DEFAULT_MASK_THRESHOLD
from ..errors import EditRequestError
from ..facts import EditRequest
from ..models.live import LiveModel
from ..models.source import BaseSource, parse_base_argument
from ..repo.repository import Repo
from . import branching, changes, describe, edit, evaluate, exporting, inspect, maintenance, merging
from .statistics import DEFAULT_STATS_TOKENS

Progress = Callable[[int, int], None] | None


class Repository(Repo):
    """A repository with every verb. Open with `Repository.open(path)` or `Repository.init(...)`."""

    @classmethod
    def init(cls, path: str | Path = ".", base: str | BaseSource | None = None,
             progress: Progress = None, branch: str = "main") -> Repository:
        source = base if isinstance(base, BaseSource) else parse_base_argument(base)
        repo = cls.create(path, source, progress=progress, branch=branch)
        return cls(repo.dir)

    # -- history views -------------------------------------------------------------------
    def log(self, rev: str = "HEAD", max_count: int | None = None, stat: bool = False):
        return describe.log(self, rev, max_count, stat)

    def show(self, rev: str = "HEAD") -> describe.CommitInfo:
        return describe.commit_info(self, self.resolve(rev), stat=True)

    def diff(self, a: str, b: str = "HEAD") -> describe.DiffReport:
        return describe.diff(self, a, b)

    def status(self) -> describe.Status:
        return describe.status(self)

    def facts(self, rev: str = "HEAD") -> list[tuple[str, EditRequest]]:
        return [(c, EditRequest.from_json(r)) for c, r in describe.facts_at(self, self.resolve(rev))]

    # -- branches and tags ---------------------------------------------------------------
    def branch(self, name: str, start: str = "HEAD", force: bool = False) -> str:
        return branching.create_branch(self, name, start, force)

    def delete_branch(self, name: str, force: bool = False) -> None:
        branching.delete_branch(self, name, force)

    def switch(self, target: str, create: bool = False, detach: bool = False) -> str:
        return branching.switch(self, target, create, detach)

    def switch_orphan(self, name: str, base_id: str | None = None) -> str:
        return branching.switch_orphan(self, name, base_id)

    def tag(self, name: str, rev: str = "HEAD", force: bool = False) -> str:
        return branching.create_tag(self, name, rev, force)

    def delete_tag(self, name: str) -> None:
        branching.delete_tag(self, name)

    def tags(self) -> dict[str, str]:
        from ..storage.refs import TAGS

        return self.refs.list(TAGS)

    # -- changes -------------------------------------------------------------------------
    def commit_delta(self, delta: Delta, message: str, requests=(), method=None, info=None) -> str:
        return changes.commit_delta(self, delta, message, requests, method, info)

    def revert(self, rev: str, message: str | None = None) -> str:
        return changes.revert(self, rev, message)

    def cherry_pick(self, rev: str, message: str | None = None) -> str:
        return changes.cherry_pick(self, rev, message)

    def merge(self, rev: str, strategy: str | None = None, message: str | None = None,
              no_ff: bool = False, allow_unrelated: bool = False,
              mask_threshold: float = DEFAULT_MASK_THRESHOLD, functional: bool = True) -> merging.MergeReport:
        return merging.merge(
            self, rev, strategy=strategy, message=message, no_ff=no_ff,
            allow_unrelated=allow_unrelated, mask_threshold=mask_threshold,
            functional_check=(lambda b, m, r: inspect.functional_check(self, b, m, r)) if functional else None,
            replay=lambda repo, b, keep, theirs: edit.replay(repo, b, keep, theirs),
        )

    # -- editing -------------------------------------------------------------------------
    def edit(self, requests: EditRequest | list[EditRequest], method: str | None = None,
             message: str | None = None, hparams=None, corpus: str | Path | None = None,
             stats_tokens: int = DEFAULT_STATS_TOKENS, progress=None, **overrides) -> edit.EditOutcome:
        """Teach the model at HEAD the requests (one batch, one commit).

        `hparams` is an EditHparams; keyword overrides (e.g. layers=[3, 4]) adjust it."""
        from ..editing import EditHparams

        reqs = [requests] if isinstance(requests, EditRequest) else list(requests)
        hp = hparams or EditHparams()
        if method is not None or overrides:
            d = hp.to_json()
            if method is not None:
                d["method"] = method
            d.update(overrides)
            hp = EditHparams.from_json(d)
        return edit.edit(self, reqs, hp, message, self.corpus(corpus) if corpus else None,
                         stats_tokens, progress)

    def edit_batches(self, requests: list[EditRequest], batch_size: int, **kw) -> list[edit.EditOutcome]:
        """Sequential batches, one commit each (the lifelong-editing setting)."""
        if batch_size < 1:
            raise EditRequestError("batch size must be at least 1")
        return [self.edit(requests[i : i + batch_size], **kw) for i in range(0, len(requests), batch_size)]

    def ask(self, prompt: str, rev: str = "HEAD", top_k: int = 5, max_new_tokens: int = 12) -> inspect.Answer:
        return inspect.ask(self, prompt, rev, top_k, max_new_tokens)

    def blame(self, prompt: str, rev: str = "HEAD") -> inspect.BlameReport:
        return inspect.blame(self, prompt, rev)

    def evaluate(self, rev: str = "HEAD", dataset: str | Path | None = None, perplexity: bool = True,
                 records: bool = False) -> evaluate.EvalResult:
        """Edit metrics at rev (its own facts, or a CounterFact / zsRE / edit file) and perplexity."""
        return evaluate.evaluate(self, rev, dataset, perplexity, records)

    # -- models --------------------------------------------------------------------------
    def load_model(self, rev: str = "HEAD", progress: Progress = None) -> LiveModel:
        """The model at rev (cached; moving between revisions rewrites only changed weights).

        The returned object is shared with the repository: copy it before modifying."""
        return self.live_model(self.resolve(rev), progress=progress)

    def export(self, rev: str, out_dir: str | Path, progress: Progress = None) -> exporting.ExportReport:
        return exporting.export(self, rev, out_dir, progress)

    # -- maintenance ---------------------------------------------------------------------
    def fsck(self) -> maintenance.FsckReport:
        return maintenance.fsck(self)

    def gc(self) -> maintenance.GcReport:
        return maintenance.gc(self)

    def add_base(self, base: str | BaseSource) -> str:
        source = base if isinstance(base, BaseSource) else parse_base_argument(base)
        return maintenance.add_base(self, source)

    def relocate_base(self, base_id: str, base: str) -> None:
        maintenance.relocate_base(self, base_id, parse_base_argument(base))
