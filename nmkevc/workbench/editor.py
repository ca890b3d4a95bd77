"""An edit's inputs, gathered once, and the run of the editing engine on them.

Everything the engine reads — the architecture adapter, context templates, Σ_l and the
null-space projectors of the base, C_l of the earlier edits in effect, the model at the
state being edited — is collected here into one `EditInputs` record and handed down.
The engine never reaches back into the repository; what it returns is factored into a
`Delta` here, ready for the porcelain to store and commit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch

from ..corpus import Corpus
from ..deltas.delta import Delta, WeightDelta
from ..facts import EditRequest
from ..models.adapters import ArchAdapter
from ..models.live import ModelState
from .bench import Workbench
from .health import state_health
from .statistics import (
    DEFAULT_STATS_TOKENS,
    context_templates,
    nullspace_projectors,
    prior_key_covariance,
    second_moments,
    templates_key,
)

Progress = Callable[[str, int, int], None] | None


@dataclass(frozen=True)
class EditInputs:
    """What one edit runs on: the model state it edits and the statistics it reads."""

    base_id: str
    adapter: ArchAdapter
    layers: list[int]
    templates: list[str]
    #: Σ_l per layer and the stats object ids they came from
    sigmas: dict[int, torch.Tensor]
    stats_ids: dict[int, str]
    #: P_l per layer (None: the method uses no projector) and the directions each keeps
    projectors: dict[int, torch.Tensor] | None
    kept: dict[int, int]
    #: C_l = Σ K Kᵀ of the earlier edits in effect, per layer (missing = none yet)
    prior: dict[int, torch.Tensor]
    state: ModelState
    corpus: Corpus
    stats_tokens: int
    #: the unedited base, for the options that read it (z on the base weights, the norm anchor)
    base_state: ModelState | None = None


def with_layers(bench: Workbench, base_id: str, hp):
    """A copy of `hp` naming the layers it edits on this base (the adapter's default for
    the depth when none are given; given ones are checked there). The copy is what a commit
    records, so a replay edits the same layers; the caller's record is left as it was."""
    adapter = bench.adapter(base_id)
    config = bench.repo.manifest(base_id).config
    return replace(hp, layers=adapter.edit_layers(hp.layers, adapter.layer_count(config)))


def gather(bench: Workbench, base_id: str, commits: list[str], hp, corpus: Corpus | None = None,
           stats_tokens: int = DEFAULT_STATS_TOKENS, progress: Progress = None,
           extra: Sequence[str] = ()) -> EditInputs:
    """The inputs of an edit with `hp` (which names its layers: `with_layers`) on the model of
    `commits` (an effective set) plus stored, uncommitted deltas `extra`."""
    from ..editing import get_method

    repo, adapter = bench.repo, bench.adapter(base_id)
    layers = list(hp.layers)
    templates = context_templates(bench, templates_key(base_id, hp))
    corpus = corpus or bench.corpus()
    sigmas, stats_ids = second_moments(bench, base_id, layers, corpus, stats_tokens,
                                       progress=None if progress is None else lambda d, t: progress("statistics", d, t))
    projectors, kept = None, {}
    if get_method(hp.method).uses_projector:
        projectors, kept = nullspace_projectors(repo, sigmas, stats_ids, hp.nullspace)
    names = {adapter.weight_name(x): x for x in layers}
    prior = {names[n]: c for n, c in prior_key_covariance(repo, commits, list(names), extra).items()}
    base_state = bench.base_model(base_id) if reads_base_model(hp) else None
    state = bench.model_of(base_id, commits, extra)
    return EditInputs(base_id, adapter, layers, templates, sigmas, stats_ids, projectors, kept, prior, state,
                      corpus, stats_tokens, base_state)


def reads_base_model(hp) -> bool:
    """Whether an edit with `hp` reads the unedited base model (a second copy of the weights)."""
    return hp.z_weights == "base" or hp.z_norm_anchor is not None


def compute_delta(inputs: EditInputs, requests: list[EditRequest], hp, progress: Progress = None) -> tuple[Delta, dict]:
    """Run the editor on `inputs` and factor its result into a delta, with what the commit
    records of how it was made."""
    from ..editing import compute_edit, get_method

    method = get_method(hp.method)
    model = inputs.state.model
    result = compute_edit(
        model, inputs.state.tokenizer, requests, hp, context_templates=inputs.templates,
        projectors=inputs.projectors, prior_keys_cov=inputs.prior,
        key_second_moment=inputs.sigmas if method.needs_second_moment(hp) else None,
        progress=progress,  # the engine names its phases: z, attribution, update
        base_model=None if inputs.base_state is None else inputs.base_state.model,
    )
    adapter = inputs.adapter
    d_model, d_ff = adapter.dims(model, inputs.layers[0])
    weights = []
    for u in result.updates:
        info = dict(u.info)
        if u.layer in inputs.kept:
            info["nullspace_kept"] = inputs.kept[u.layer]
        weights.append(WeightDelta(
            name=u.weight_name, layer=u.layer, orientation=adapter.orientation,
            d_model=d_model, d_ff=d_ff, idx=u.idx.to(torch.int64), U=u.U.float().contiguous(),
            V=u.V.float().contiguous(), K=u.keys.float().contiguous(), info=info,
        ))
    delta = Delta(tuple(weights), {"method": hp.method})
    corpus = inputs.corpus
    info = {
        "context_templates": inputs.templates,
        "stats": {str(k): v for k, v in inputs.stats_ids.items()},
        "corpus": {"id": corpus.id, "name": corpus.name, "tokens": inputs.stats_tokens},
        "editor": _jsonable(result.info),
    }
    return delta, info


@dataclass
class EditRun:
    """One edit, made and stored but not yet committed: its delta, the hyperparameters that
    made it (layers named), the before/after checks and what the commit records."""

    hparams: object
    delta: Delta
    delta_id: str
    info: dict = field(default_factory=dict)


def run_edit(bench: Workbench, base_id: str, commits: list[str], requests: list[EditRequest], hp,
             corpus: Corpus | None = None, stats_tokens: int = DEFAULT_STATS_TOKENS,
             progress: Progress = None) -> EditRun:
    """Edit the model of `commits` with `requests` (one batch): gather the inputs once,
    check the requests before, compute and store the delta, check them after, and measure
    the new state's health (`workbench.health`). The caller holds the lock and commits
    `EditRun.delta_id`."""
    hp = with_layers(bench, base_id, hp)
    inputs = gather(bench, base_id, commits, hp, corpus, stats_tokens, progress)
    # before the edit only P(new) on the rewrite prompt is recorded: its paraphrases and
    # neighbours (most of the check's forward passes) are scored after the edit alone
    before = check_requests(inputs.state, [rewrite_only(r) for r in requests])
    delta, info = compute_delta(inputs, requests, hp, progress)
    did = bench.repo.put_delta(delta)
    after = check_requests(bench.model_of(base_id, commits, [did]), requests)
    checks = []
    for b, a in zip(before, after, strict=True):
        rec = {k: v for k, v in a.items() if k != "p"}
        checks.append({**rec, "p_before": b["p"], "p_after": a["p"]})
    info["evaluation"] = {"requests": checks}
    info["health"] = state_health(bench, base_id, commits, inputs.sigmas, extra=[did], batch=delta)
    return EditRun(hp, delta, did, info)


def rewrite_only(request: EditRequest) -> EditRequest:
    """The request with its rewrite prompt and new target alone (nothing else to score)."""
    return replace(request, target_true=None, paraphrases=(), neighborhood=())


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
