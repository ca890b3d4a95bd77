"""`edit`: run NMKE (or AlphaEdit / MEMIT) on the model at HEAD and commit the delta.

The editor sees the model of HEAD's effective set, the null-space projectors of the
base (from stored statistics), and C_l rebuilt from the keys stored with every delta
in effect — so protection of earlier edits follows branches, merges and reverts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace

import torch

from ..corpus import Corpus
from ..deltas.delta import Delta, WeightDelta
from ..errors import EditRequestError
from ..facts import EditRequest
from ..history.commit import Commit
from ..models.live import ModelState
from ..repo.repository import Repo, default_author
from ..version import __version__
from .edit_inputs import (
    DEFAULT_STATS_TOKENS,
    context_templates,
    nullspace_projectors,
    second_moments,
    templates_key,
)
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

    def to_json(self) -> dict:
        return asdict(self)


def check_edit_input(repo: Repo, requests: Sequence[EditRequest], stats_tokens: int,
                     base_id: str | None = None) -> None:
    """Refuse what cannot work before any model is loaded: no requests, a bad token
    budget, or a request longer than the model's context (counted with the base's
    tokenizer, which loads in a moment; the weights are not touched)."""
    if not requests:
        raise EditRequestError("no edit requests given")
    if isinstance(stats_tokens, bool) or not isinstance(stats_tokens, int) or stats_tokens < 1:
        raise EditRequestError(f"--stats-tokens must be a positive number of tokens, not {stats_tokens!r}")
    base_id = base_id or repo.commit(repo.resolve("HEAD")).base
    ctx = context_of(repo, base_id)
    if ctx is None:
        return
    for i, r in enumerate(requests, 1):
        target = token_count(repo, base_id, " " + r.target_new) + 1
        checks = [(r.text, ctx - TEMPLATE_RESERVE, "prompt")]
        checks += [(t, ctx, "paraphrase") for t in r.paraphrases]
        checks += [(t, ctx, "neighbourhood prompt") for t in r.neighborhood]
        for text, limit, what in checks:
            n = prompt_tokens(repo, base_id, text) + target
            if n > limit:
                raise EditRequestError(
                    f"request {i} ({r.subject[:40]!r}): {what} and target are {n} tokens; the model's "
                    f"context of {ctx} tokens leaves room for {limit}"
                )


def _stage(progress: Progress, name: str) -> Callable[[int, int], None] | None:
    if progress is None:
        return None
    return lambda done, total: progress(name, done, total)


def check_requests(state: ModelState, requests: Sequence[EditRequest]) -> list[dict]:
    """P(target_new) on each rewrite prompt, and the CounterFact metrics where possible."""
    from ..evaluation.metrics import evaluate_requests

    report = evaluate_requests(state.model, state.tokenizer, list(requests))
    out = []
    for r, res in zip(requests, report.records, strict=True):
        rec = {"text": r.text, "target_new": r.target_new, "p": res.rewrite.p_new,
               "efficacy": bool(res.rewrite.success)}
        if res.generalization is not None:
            rec["generalization"] = res.generalization
        if res.specificity is not None:
            rec["specificity"] = res.specificity
        out.append(rec)
    return out


def with_layers(repo: Repo, base_id: str, hp):
    """A copy of `hp` naming the layers it edits on this base (the adapter's default for
    the depth when none are given; given ones are checked there). The copy is what a commit
    records, so a replay edits the same layers; the caller's record is left as it was."""
    from ..models.adapters import adapter_for

    config = repo.manifest(base_id).config
    adapter = adapter_for(config)
    return replace(hp, layers=adapter.edit_layers(hp.layers, adapter.layer_count(config)))


def compute_delta(
    repo: Repo,
    base_id: str,
    commits: list[str],
    requests: list[EditRequest],
    hp,
    corpus: Corpus | None = None,
    stats_tokens: int = DEFAULT_STATS_TOKENS,
    progress: Progress = None,
    extra: Sequence[str] = (),
) -> tuple[Delta, dict]:
    """Run the editor on the model of `commits` (an effective set, plus stored deltas
    `extra` not yet committed) and factor its result. `hp` names its layers
    (`with_layers`)."""
    from ..editing import compute_edit, get_method
    from ..models.adapters import adapter_for

    adapter = adapter_for(repo.manifest(base_id).config)
    layers = list(hp.layers)
    templates = context_templates(repo, templates_key(base_id, hp))
    corpus = corpus or repo.corpus()
    sigmas, stats_ids = second_moments(repo, base_id, layers, corpus, stats_tokens,
                                       progress=_stage(progress, "statistics"))
    method = get_method(hp.method)
    projectors, kept = (None, {})
    if method.uses_projector:
        projectors, kept = nullspace_projectors(repo, sigmas, stats_ids, hp.nullspace)
    names = {adapter.weight_name(x): x for x in layers}
    prior = {names[n]: c for n, c in repo.keys_cov(commits, list(names), extra).items()}
    state = repo.model_of(base_id, commits, extra)
    result = compute_edit(
        state.model, state.tokenizer, requests, hp, context_templates=templates,
        projectors=projectors, prior_keys_cov=prior,
        key_second_moment=sigmas if method.needs_second_moment(hp) else None,
        progress=progress,  # the engine names its phases: z, attribution, update
    )
    d_model, d_ff = adapter.dims(state.model, layers[0])
    weights = []
    for u in result.updates:
        info = dict(u.info)
        if u.layer in kept:
            info["nullspace_kept"] = kept[u.layer]
        weights.append(WeightDelta(
            name=u.weight_name, layer=u.layer, orientation=adapter.orientation,
            d_model=d_model, d_ff=d_ff, idx=u.idx.to(torch.int64), U=u.U.float().contiguous(),
            V=u.V.float().contiguous(), K=u.keys.float().contiguous(), info=info,
        ))
    delta = Delta(tuple(weights), {"method": hp.method})
    info = {
        "context_templates": templates,
        "stats": {str(k): v for k, v in stats_ids.items()},
        "corpus": {"id": corpus.id, "name": corpus.name, "tokens": stats_tokens},
        "editor": _jsonable(result.info),
    }
    return delta, info


def edit(
    repo: Repo,
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
    with repo.writing():
        head = repo.resolve("HEAD")
        base_id = repo.commit(head).base
        check_edit_input(repo, requests, stats_tokens, base_id)
        hp = with_layers(repo, base_id, hparams or EditHparams())
        commits = repo.effective(head)
        before = check_requests(repo.model_of(base_id, commits), requests)
        delta, info = compute_delta(repo, base_id, commits, requests, hp, corpus, stats_tokens, progress)
        did = repo.put_delta(delta)
        after = check_requests(repo.model_of(base_id, commits, [did]), requests)
        checks = []
        for b, a in zip(before, after, strict=True):
            rec = {k: v for k, v in a.items() if k != "p"}
            checks.append({**rec, "p_before": b["p"], "p_after": a["p"]})
        info["evaluation"] = {"requests": checks}
        info["seconds"] = round(time.time() - t0, 3)
        c = Commit(
            kind="edit", parents=(head,), base=base_id,
            message=message or default_message(requests), author=default_author(),
            time=int(time.time()), delta=did, requests=tuple(r.to_json() for r in requests),
            method={"name": hp.method, "hparams": hp.to_json(), "tool_version": __version__},
            info=info,
        )
        cid = repo.advance_head(c, f"edit: {c.summary}")
        repo.keep_live_state(cid)  # the checks left the model at cid: the next export starts from it
    layers = [
        {"layer": w.layer, "neurons": int(w.idx.numel()), "d_ff": w.d_ff, **w.info} for w in delta.weights
    ]
    return EditOutcome(cid, [r.to_json() for r in requests], checks, layers, info["seconds"],
                       repo.store.stored_size(did), {"editor": info["editor"]})


def replay(repo: Repo, base_id: str, keep: list[str], theirs: list[str],
           corpus: Corpus | None = None, stats_tokens: int = DEFAULT_STATS_TOKENS,
           progress: Progress = None) -> tuple[str | None, dict]:
    """Re-run each of `theirs` (in order, with its own method and hyperparameters) on top
    of `keep`, so keys, C and the null space are right for the merged history; the
    results are combined into one delta for the merge commit."""
    from ..deltas.compose import combine
    from ..editing import EditHparams

    done: list[str] = []
    requests: list[dict] = []
    info: dict = {"replayed": []}
    for cid in theirs:
        c = repo.commit(cid)
        reqs = c.edit_requests()
        if not reqs:
            continue
        hp = with_layers(repo, base_id, EditHparams.from_json((c.method or {}).get("hparams") or {}))
        delta, _ = compute_delta(repo, base_id, keep, reqs, hp, corpus, stats_tokens, progress, done)
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


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if isinstance(x, float | int | str | bool) or x is None:
        return x
    return str(x)
