"""The one entry point: `compute_edit` runs Steps 1–4 and returns the factored update.

The method needs the update applied layer by layer while it runs; the caller (the
repository) owns the model's state, so every touched weight is restored bit for bit
before returning, including on error. What comes back is only the factored form.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch

from ..errors import EditRequestError, NmkevcError
from ..facts import EditRequest
from ..models.adapters import ArchAdapter, adapter_for
from ..models.tokens import encode
from .attribution import attribution_scores
from .guard import guard_covariance, guard_keys
from .hooks import frozen_eval
from .hparams import EditHparams
from .masking import neuron_mask
from .registry import EditMethod, FactorInputs, get_method
from .tokens import split_template, template_weights, templated
from .update import Factor, run_layers
from .zopt import ZResult, optimise_z

#: progress(phase, done, total) with phase "z", "attribution" or "update"
Progress = Callable[[str, int, int], None] | None


@dataclass
class LayerUpdate:
    """One edited weight, factored: ΔW (d_model × d_ff) = V @ U.T on columns idx."""

    layer: int
    weight_name: str
    idx: torch.Tensor  # (k,) int64 sorted
    U: torch.Tensor  # (k, n) float32: rows of U for the masked neurons only
    V: torch.Tensor  # (d_model, n) float32 (= R)
    keys: torch.Tensor  # (d_ff, n) float32: keys recomputed with the new weights of ALL layers
    #: mask info, delta norm, the solve's λ (or λ0) and `written_fraction` (‖ΔW k‖ / ‖r‖ on the
    #: edit's own keys, mean over requests); stored with the delta (WeightDelta.info)
    info: dict = field(default_factory=dict)


@dataclass
class EditResult:
    updates: list[LayerUpdate]
    info: dict  # method, layers, z losses per request, steps, timings
    z: torch.Tensor | None = None  # (d_model, n) the Step-1 targets at the last edited layer


@dataclass
class EditPlan:
    """What one edit runs on, checked before any work."""

    method: EditMethod
    adapter: ArchAdapter
    requests: list[EditRequest]
    templates: list[str]
    layers: list[int]
    d_ff: int


def compute_edit(
    model,
    tokenizer,
    requests: Sequence[EditRequest],
    hparams: EditHparams,
    *,
    context_templates: Sequence[str],
    projectors: dict[int, torch.Tensor] | None,
    prior_keys_cov: dict[int, torch.Tensor] | None,
    key_second_moment: dict[int, torch.Tensor] | None = None,
    progress: Progress = None,
    base_model=None,
) -> EditResult:
    """Run the edit for a batch of requests; the model is left exactly as it was.

    projectors: P_l per layer (None = identity: no null-space protection); prior_keys_cov:
    C_l = Σ K Kᵀ of earlier edits (missing layer = zeros); key_second_moment: Σ_l (MEMIT, and
    the projected masked update); base_model: the unedited base model (same architecture and
    tokenizer, never modified), read by `z_weights="base"` and `z_norm_anchor` only (it may be
    `model` itself when nothing has been edited yet)."""
    plan = plan_edit(model, requests, hparams, context_templates)
    _check_stats(plan.method, plan.layers, plan.d_ff, projectors, prior_keys_cov, key_second_moment,
                 plan.method.needs_second_moment(hparams))
    _check_base(model, plan, hparams, base_model)
    report = _reporter(progress)
    weights = [plan.adapter.weight(model, layer) for layer in plan.layers]
    originals = [w.detach().clone() for w in weights]
    timings: dict[str, float] = {}
    try:
        base_frozen = frozen_eval(base_model) if base_model is not None and base_model is not model else nullcontext()
        with frozen_eval(model), base_frozen:
            with _timed(timings, "z"):
                zres = step1_targets(model, tokenizer, plan, hparams, report, base_model)
            batch = encode(tokenizer, *templated(plan.requests, plan.templates), start=hparams.prompt_start)
            masks, mask_info = None, {}
            if plan.method.masks_neurons:
                with _timed(timings, "attribution"):
                    masks, mask_info = step2_3_masks(model, plan, batch, hparams, report)
            guard, guard_info = None, {}
            if hparams.relation_guard:
                with _timed(timings, "guard"):
                    guard, guard_info = relation_guard(model, tokenizer, plan, hparams)
            with _timed(timings, "update"):
                steps, final_keys, h_final, key_seconds = step4_update(
                    model, plan, batch, zres.z, hparams, masks, projectors, prior_keys_cov, key_second_moment,
                    report, guard)
            # "keys": Step 4's forward passes; "update": its solves and writes
            timings["keys"] = key_seconds
            timings["update"] -= key_seconds
    finally:
        with torch.no_grad():
            for w, orig in zip(weights, originals, strict=True):
                w.copy_(orig)
    result = _result(plan, hparams, steps, final_keys, h_final, zres, mask_info, timings, projectors is not None)
    result.info.update(guard_info)
    return result


def plan_edit(model, requests: Sequence[EditRequest], hparams: EditHparams,
              context_templates: Sequence[str]) -> EditPlan:
    """Validate the request batch, templates and layers (one-line errors before any work)."""
    hparams.validate()
    method = get_method(hparams.method)
    requests = list(requests)
    if not requests:
        raise EditRequestError("no edit requests given")
    templates = list(context_templates)
    if not templates:
        raise EditRequestError("no context templates given")
    for t in templates:
        split_template(t)
    adapter = adapter_for(model)
    n_layers = adapter.num_layers(model)
    layers = adapter.edit_layers(hparams.layers, n_layers)
    return EditPlan(method, adapter, requests, templates, layers, adapter.dims(model, layers[0])[1])


def step1_targets(model, tokenizer, plan: EditPlan, hp: EditHparams, report, base_model=None) -> ZResult:
    """Step 1: z = h + δ at the last edited layer, for every request (δ found on the base model
    with `z_weights="base"`)."""
    zres = optimise_z(model, tokenizer, plan.adapter, plan.requests, plan.templates, plan.layers[-1], hp,
                      progress=lambda k: report("z", k, hp.z_steps), base_model=base_model)
    report("z", hp.z_steps, hp.z_steps)  # early stops end the phase before its last step
    return zres


def step2_3_masks(model, plan: EditPlan, batch, hp: EditHparams, report) -> tuple[dict, dict]:
    """Steps 2 and 3: neuron attribution on the unedited model, then each layer's entropy mask."""
    scores, _ = attribution_scores(
        model, plan.adapter, batch, plan.layers, hp.amplification, hp.prob_clamp, hp.attribution_chunk,
        progress=lambda k: report("attribution", k, len(plan.layers)),
    )
    masks, info = {}, {}
    for layer in plan.layers:
        masks[layer], info[layer] = neuron_mask(scores[layer], hp.mask_bounds, hp.mask_exponents,
                                                hp.entropy_alpha)
    return masks, info


def relation_guard(model, tokenizer, plan: EditPlan, hp: EditHparams) -> tuple[dict, dict]:
    """The relation guard's μ_g K_g K_gᵀ per edited layer (editing/guard.py) and what the commit
    records of it: how many keys it kept."""
    keys = guard_keys(model, tokenizer, plan.adapter, plan.requests, plan.templates, plan.layers, hp.prompt_start)
    return guard_covariance(keys, hp.relation_guard), {"guard_keys": int(keys[plan.layers[0]].shape[1])}


def step4_update(model, plan: EditPlan, batch, z: torch.Tensor, hp: EditHparams, masks, projectors,
                 prior_keys_cov, key_second_moment, report, guard: dict | None = None):
    """Step 4: the layer-by-layer update (applied in place), then every layer's final keys and h at
    the last edited layer, and the seconds of its forward passes. `guard`: the relation guard's
    term per layer, kept beside C."""

    def factor(layer: int, keys: torch.Tensor, mask: torch.Tensor | None) -> Factor:
        return plan.method.factor(FactorInputs(
            keys=keys,
            projector=None if projectors is None else projectors.get(layer),
            prior_cov=(prior_keys_cov or {}).get(layer),
            second_moment=(key_second_moment or {}).get(layer),
            mask=mask,
            guard_cov=(guard or {}).get(layer),
        ), hp)

    m = len(plan.layers)
    weights = template_weights(plan.templates, hp.key_average)
    out = run_layers(model, plan.adapter, batch, len(plan.templates), plan.layers, z, factor, masks,
                     progress=lambda k: report("update", k, m + 1), key_weights=weights)
    report("update", m + 1, m + 1)
    return out


def _result(plan: EditPlan, hparams: EditHparams, steps, final_keys, h_final, zres: ZResult, mask_info: dict,
            timings: dict, projectors_given: bool) -> EditResult:
    updates = []
    for st in steps:
        info = dict(mask_info.get(st.layer, {"kept": int(st.idx.numel()), "d_ff": plan.d_ff}))
        info.update(st.info)  # λ used, written fraction ‖ΔW k‖ / ‖r‖
        gram_v = st.V.double().T @ st.V.double()
        gram_u = st.U.double().T @ st.U.double()
        info["delta_norm"] = float(torch.trace(gram_v @ gram_u).clamp_min(0).sqrt())
        updates.append(LayerUpdate(
            layer=st.layer,
            weight_name=plan.adapter.weight_name(st.layer),
            idx=st.idx,
            U=st.U,
            V=st.V,
            keys=final_keys[st.layer],
            info=info,
        ))
    # the share of z − h (h on the model edited, before Step 4) left unwritten: that is δ unless
    # δ was found on the base model (z_weights="base")
    todo = zres.delta if zres.start is None else zres.z - zres.start
    residual = (zres.z - h_final).norm(dim=0) / todo.norm(dim=0).clamp_min(1e-12)
    info = {
        "method": hparams.method,
        "layers": plan.layers,
        "n_requests": len(plan.requests),
        "z_steps": zres.steps,
        "z_nll": zres.nll,
        "z_kl": zres.kl,
        "z_loss_history": zres.history,
        "delta_over_h": [float(x) for x in zres.delta.norm(dim=0) / zres.h.norm(dim=0).clamp_min(1e-12)],
        "residual_left": [float(x) for x in residual],
        "projector": "given" if projectors_given else ("identity" if plan.method.uses_projector else "none"),
        "z_stop": zres.stop,  # per request: "loss", "top1", "loss+top1" or "steps" (ZResult.stop)
        "z_top1": zres.top1,  # per request: the MPES condition held on its last pass
        "timings": timings,
    }
    if zres.ref_norm:  # z_norm_anchor: the reference, ||z|| over it, and the requests it held back
        ref = torch.tensor(zres.ref_norm)
        info["z_norm_ref"] = zres.ref_norm
        info["z_over_ref"] = [float(x) for x in zres.z.norm(dim=0) / ref.clamp_min(1e-12)]
        info["z_norm_capped"] = [i for i, c in enumerate(zres.capped) if c]
    if zres.start is not None:  # z_weights="base": how far earlier edits moved h from the base's
        info["h_drift"] = [float(x) for x in (zres.start - zres.h).norm(dim=0) / zres.h.norm(dim=0).clamp_min(1e-12)]
    return EditResult(updates=updates, info=info, z=zres.z)


def _reporter(progress: Progress) -> Callable[[str, int, int], None]:
    if progress is None:
        return lambda _phase, _done, _total: None
    return progress


@contextmanager
def _timed(timings: dict[str, float], name: str) -> Iterator[None]:
    t0 = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - t0


def _check_base(model, plan: EditPlan, hp: EditHparams, base_model) -> None:
    """Refuse, in one line, options that need the base model when it is missing, and a base
    model of another architecture or size."""
    needs = [name for name, on in (("z_weights=base", hp.z_weights == "base"),
                                   ("z_norm_anchor", hp.z_norm_anchor is not None)) if on]
    if base_model is None:
        if needs:
            verb = "needs" if len(needs) == 1 else "need"
            raise EditRequestError(f"{' and '.join(needs)} {verb} the unedited base model "
                                   f"(compute_edit(..., base_model=...)); none was given")
        return
    try:
        adapter = adapter_for(base_model)
    except NmkevcError:
        adapter = None
    layer = plan.layers[-1]
    if (adapter is None or adapter.name != plan.adapter.name
            or adapter.num_layers(base_model) != plan.adapter.num_layers(model)
            or adapter.dims(base_model, layer) != plan.adapter.dims(model, layer)):
        raise EditRequestError("base_model is not a model of the edited model's architecture and size")


def _check_stats(method, layers, d_ff, projectors, prior, second, needs_second: bool) -> None:
    """Refuse missing or mis-shaped statistics with a one-line message before any work."""

    def square(name, table, layer, required):
        t = None if table is None else table.get(layer)
        if t is None:
            if required:
                raise NmkevcError(f"{name} for layer {layer} is missing")
            return
        if tuple(t.shape) != (d_ff, d_ff):
            raise NmkevcError(f"{name} for layer {layer} has shape {tuple(t.shape)}, expected ({d_ff}, {d_ff})")

    for layer in layers:
        if needs_second:
            square("key second moment", second, layer, required=True)
        if method.uses_projector:
            square("null-space projector", projectors, layer, required=projectors is not None)
        square("prior key covariance", prior, layer, required=False)  # read by the projected methods and ENCORE's MEMIT
