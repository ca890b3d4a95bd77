"""`edit`: run NMKE (or AlphaEdit / MEMIT) on the model at HEAD and commit the delta.

The editor sees the model of HEAD's effective set, the null-space projectors of the
base (from stored statistics), and C_l rebuilt from the keys stored with every delta
in effect — so protection of earlier edits follows branches, merges and reverts. The
workbench gathers those inputs once (`workbench.editor`); this module checks the
requests, runs the edit between the before and after checks, and commits.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from ..corpus import Corpus
from ..errors import EditRequestError
from ..facts import EditRequest
from ..history.commit import Commit
from ..repo.repository import default_author
from ..version import __version__
from ..workbench import Workbench
from ..workbench.editor import compute_delta, gather, run_edit, with_layers
from ..workbench.statistics import DEFAULT_STATS_TOKENS
from .inputs import context_of, prompt_tokens, token_count

#: Tokens kept free in front of a rewrite prompt for the context templates (a short
#: prefix plus 10 sampled tokens, see editing/context.py).
TEMPLATE_RESERVE = 32
Progress = Callable[[str, int, int], None] | None


@dataclass
class EditOutcome:
    commit: str
    requests: list[dict]
    checks: list[dict]
    layers: list[dict]
    seconds: float
    stored_bytes: int
    info: dict = field(default_factory=dict)
    #: the drift of the model after this commit (`workbench.health`: norm growth, disturbance)
    health: dict = field(default_factory=dict)
    #: one line each: e.g. the cumulative drift past the repository's `drift_warn` setting
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


def check_edit_input(bench: Workbench, requests: Sequence[EditRequest], stats_tokens: int,
                     base_id: str | None = None) -> None:
    """Refuse what cannot work before any model is loaded: no requests, a bad token
    budget, or a request longer than the model's context (counted with the base's
    tokenizer, which loads in a moment; the weights are not touched)."""
    if not requests:
        raise EditRequestError("no edit requests given")
    if isinstance(stats_tokens, bool) or not isinstance(stats_tokens, int) or stats_tokens < 1:
        raise EditRequestError(f"--stats-tokens must be a positive number of tokens, not {stats_tokens!r}")
    base_id = base_id or bench.repo.commit(bench.repo.resolve("HEAD")).base
    ctx = context_of(bench, base_id)
    if ctx is None:
        return
    for i, r in enumerate(requests, 1):
        target = token_count(bench, base_id, " " + r.target_new) + 1
        checks = [(r.text, ctx - TEMPLATE_RESERVE, "prompt")]
        checks += [(t, ctx, "paraphrase") for t in r.paraphrases]
        checks += [(t, ctx, "neighbourhood prompt") for t in r.neighborhood]
        for text, limit, what in checks:
            n = prompt_tokens(bench, base_id, text) + target
            if n > limit:
                raise EditRequestError(
                    f"request {i} ({r.subject[:40]!r}): {what} and target are {n} tokens; the model's "
                    f"context of {ctx} tokens leaves room for {limit}"
                )


def edit(
    bench: Workbench,
    requests: list[EditRequest],
    hparams=None,
    message: str | None = None,
    corpus: Corpus | None = None,
    stats_tokens: int = DEFAULT_STATS_TOKENS,
    progress: Progress = None,
) -> EditOutcome:
    """Edit HEAD's model with `requests` (one batch) and commit the result."""
    from ..editing import EditHparams

    if not requests:
        raise EditRequestError("no edit requests given")
    t0 = time.time()
    repo = bench.repo
    with repo.writing():
        head = repo.resolve("HEAD")
        base_id = repo.commit(head).base
        check_edit_input(bench, requests, stats_tokens, base_id)
        run = run_edit(bench, base_id, repo.effective(head), requests, hparams or EditHparams(), corpus,
                       stats_tokens, progress)
        info = {**run.info, "seconds": round(time.time() - t0, 3)}
        c = Commit(
            kind="edit", parents=(head,), base=base_id,
            message=message or default_message(requests), author=default_author(),
            time=int(time.time()), delta=run.delta_id, requests=tuple(r.to_json() for r in requests),
            method={"name": run.hparams.method, "hparams": run.hparams.to_json(), "tool_version": __version__},
            info=info,
        )
        cid = repo.advance_head(c, f"edit: {c.summary}")
        bench.keep_live_state(cid)  # the checks left the model at cid: the next export starts from it
    checks, delta = info["evaluation"]["requests"], run.delta
    layers = [
        {"layer": w.layer, "neurons": int(w.idx.numel()), "d_ff": w.d_ff, **w.info} for w in delta.weights
    ]
    health = info["health"]
    return EditOutcome(cid, [r.to_json() for r in requests], checks, layers, info["seconds"],
                       repo.store.stored_size(run.delta_id), {"editor": info["editor"]}, health,
                       drift_warnings(health, repo.config.drift_warn))


def drift_warnings(health: dict, threshold: float) -> list[str]:
    """One line when the model's cumulative drift has passed the repository's threshold."""
    drift = health.get("disturbance_cumulative")
    if drift is None or drift <= threshold:
        return []
    return [f"the model has drifted {drift:.3f} from its base on generic text (threshold {threshold:g}, "
            "setting drift_warn): held-out perplexity is likely up; see docs/method.md, 'Lifelong mechanisms'"]


def replay(bench: Workbench, base_id: str, keep: list[str], theirs: list[str],
           corpus: Corpus | None = None, stats_tokens: int = DEFAULT_STATS_TOKENS,
           progress: Progress = None) -> tuple[str | None, dict]:
    """Re-run each of `theirs` (in order, with its own method and hyperparameters) on top
    of `keep`, so keys, C and the null space are right for the merged history; the
    results are combined into one delta for the merge commit."""
    from ..deltas.compose import combine
    from ..editing import EditHparams

    repo = bench.repo
    done: list[str] = []
    requests: list[dict] = []
    info: dict = {"replayed": []}
    for cid in theirs:
        c = repo.commit(cid)
        reqs = c.edit_requests()
        if not reqs:
            continue
        hp = with_layers(bench, base_id, EditHparams.from_json((c.method or {}).get("hparams") or {}))
        inputs = gather(bench, base_id, keep, hp, corpus, stats_tokens, progress, done)
        delta, _ = compute_delta(inputs, reqs, hp, progress)
        done.append(repo.put_delta(delta))
        requests.extend(c.requests)
        info["replayed"].append(cid)
    if not done:
        return None, {}
    merged = combine([repo.delta(d) for d in done])
    return repo.put_delta(merged), {"requests": requests, "info": info,
                                    "method": {"name": "replay", "tool_version": __version__}}


def default_message(requests: Sequence[EditRequest]) -> str:
    first = f"{requests[0].text} -> {requests[0].target_new}"
    if len(requests) == 1:
        return f"Edit: {first}"
    return f"Edit {len(requests)} facts ({first}, ...)"
