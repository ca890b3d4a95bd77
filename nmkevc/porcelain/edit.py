"""`edit`: run NMKE (or AlphaEdit / MEMIT) on the model at HEAD and commit the delta.

The editor sees the model of HEAD's effective set, the null-space projectors of the
base (from stored statistics), and C_l rebuilt from the keys stored with every delta
in effect — so protection of earlier edits follows branches, merges and reverts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch

from ..corpus import Corpus
from ..deltas.delta import Delta, WeightDelta
from ..errors import EditRequestError, NmkevcError
from ..facts import EditRequest
from ..history.commit import Commit
from ..repo.repository import Repo, default_author
from ..version import __version__
from .statistics import DEFAULT_STATS_TOKENS, second_moments

CONTEXT_REFS = "refs/context/"
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


def context_templates(repo: Repo, base_id: str, seed: int = 0) -> list[str]:
    """The base's context templates: sampled once from the unedited base, then stored."""
    from ..editing import generate_context_templates

    ref = CONTEXT_REFS + base_id
    oid = repo.refs.read(ref)
    if oid is not None:
        return json.loads(repo.store.get(oid, "blob"))["templates"]
    live = repo.live_model_of(base_id, [])
    torch.manual_seed(seed)
    templates = generate_context_templates(live.model, live.tokenizer, seed=seed)
    payload = json.dumps({"base": base_id, "seed": seed, "templates": templates}, sort_keys=True)
    repo.refs.set(ref, repo.store.put("blob", payload.encode("utf-8")), "context templates")
    return templates


def _projectors(sigmas: dict[int, torch.Tensor], hp) -> tuple[dict[int, torch.Tensor], dict[int, int]]:
    from ..editing.covariance import nullspace_projector

    out, kept = {}, {}
    for layer, sigma in sigmas.items():
        out[layer], kept[layer] = nullspace_projector(
            sigma, threshold=hp.nullspace_threshold, keep_fraction=hp.nullspace_keep_fraction
        )
    return out, kept


def _stage(progress: Progress, name: str) -> Callable[[int, int], None] | None:
    if progress is None:
        return None
    return lambda done, total: progress(name, done, total)


def check_requests(model, tokenizer, requests: Sequence[EditRequest]) -> list[dict]:
    """P(target_new) on each rewrite prompt, and the CounterFact metrics where possible."""
    from ..evaluation.metrics import evaluate_requests

    report = evaluate_requests(model, tokenizer, list(requests))
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
    `extra` not yet committed) and factor its result."""
    from ..editing import compute_edit, get_method
    from ..models.adapters import adapter_for

    manifest = repo.manifest(base_id)
    adapter = adapter_for(manifest.config)
    n_layers = int(manifest.config.get("num_hidden_layers") or manifest.config.get("n_layer"))
    layers = list(hp.layers) if hp.layers else adapter.default_layers(n_layers)
    bad = [x for x in layers if not 0 <= x < n_layers]
    if bad:
        raise NmkevcError(f"layer {bad[0]} does not exist (the model has {n_layers} layers)")
    hp.layers = layers
    templates = context_templates(repo, base_id)
    corpus = corpus or repo.corpus()
    sigmas, stats_ids = second_moments(repo, base_id, layers, corpus, stats_tokens,
                                       progress=_stage(progress, "statistics"))
    method = get_method(hp.method)
    projectors, kept = (None, {})
    if method.uses_projector:
        projectors, kept = _projectors(sigmas, hp)
    names = {adapter.weight_name(x): x for x in layers}
    prior = {names[n]: c for n, c in repo.keys_cov(commits, list(names), extra).items()}
    live = repo.live_model_of(base_id, commits, extra)
    result = compute_edit(
        live.model, live.tokenizer, requests, hp, context_templates=templates,
        projectors=projectors, prior_keys_cov=prior,
        key_second_moment=sigmas if method.uses_second_moment else None,
        progress=_stage(progress, "edit"),
    )
    d_model, d_ff = adapter.dims(live.model, layers[0])
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
    hp = hparams or EditHparams()
    t0 = time.time()
    with repo.writing():
        head = repo.resolve("HEAD")
        base_id = repo.commit(head).base
        commits = repo.effective(head)
        live = repo.live_model_of(base_id, commits)
        before = check_requests(live.model, live.tokenizer, requests)
        delta, info = compute_delta(repo, base_id, commits, requests, hp, corpus, stats_tokens, progress)
        did = repo.put_delta(delta)
        live = repo.live_model_of(base_id, commits, [did])
        after = check_requests(live.model, live.tokenizer, requests)
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
        hp = EditHparams.from_json((c.method or {}).get("hparams") or {})
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
