"""The one entry point: `compute_edit` runs Steps 1–4 and returns the factored update.

The method needs the update applied layer by layer while it runs; the caller (the
repository) owns the model's state, so every touched weight is restored bit for bit
before returning, including on error. What comes back is only the factored form.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ..errors import EditRequestError, NmkevcError
from ..facts import EditRequest
from ..models.adapters import adapter_for
from .attribution import attribution_scores
from .hooks import frozen_eval
from .hparams import EditHparams
from .masking import neuron_mask
from .methods import FactorInputs, get_method
from .tokens import encode, split_template, templated
from .update import rewrite_keys, run_layers
from .zopt import optimise_z

Progress = Callable[[int, int], None] | None


@dataclass
class LayerUpdate:
    """One edited weight, factored: ΔW (d_model × d_ff) = V @ U.T on columns idx."""

    layer: int
    weight_name: str
    idx: torch.Tensor  # (k,) int64 sorted
    U: torch.Tensor  # (k, n) float32: rows of U for the masked neurons only
    V: torch.Tensor  # (d_model, n) float32 (= R)
    keys: torch.Tensor  # (d_ff, n) float32: keys recomputed with the new weights of ALL layers
    info: dict = field(default_factory=dict)  # mask info, delta norm


@dataclass
class EditResult:
    updates: list[LayerUpdate]
    info: dict  # method, layers, z losses per request, steps, timings
    z: torch.Tensor | None = None  # (d_model, n) the Step-1 targets at the last edited layer


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
) -> EditResult:
    """Run the edit for a batch of requests; the model is left exactly as it was.

    projectors: P_l per layer (None = identity: no null-space protection); prior_keys_cov:
    C_l = Σ K Kᵀ of earlier edits (missing layer = zeros); key_second_moment: Σ_l (MEMIT only)."""
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
    layers = list(hparams.layers) if hparams.layers is not None else adapter.default_layers(n_layers)
    if layers[-1] >= n_layers:
        raise EditRequestError(f"layer {layers[-1]} does not exist (the model has {n_layers} layers)")
    d_ff = adapter.dims(model, layers[0])[1]
    _check_stats(method, layers, d_ff, projectors, prior_keys_cov, key_second_moment)

    n_attr = len(layers) if method.masks_neurons else 0
    total = hparams.z_steps + n_attr + len(layers) + 1
    offsets = {"z": 0, "attr": hparams.z_steps, "upd": hparams.z_steps + n_attr}

    def tick(stage: str) -> Callable[[int], None] | None:
        if progress is None:
            return None
        return lambda k: progress(offsets[stage] + k, total)

    weights = [adapter.weight(model, layer) for layer in layers]
    originals = [w.detach().clone() for w in weights]
    timings: dict[str, float] = {}
    try:
        with frozen_eval(model):
            t0 = time.perf_counter()
            zres = optimise_z(model, tokenizer, adapter, requests, templates, layers[-1], hparams,
                              progress=tick("z"))
            timings["z"] = time.perf_counter() - t0

            texts, ends = templated(requests, templates)
            batch = encode(tokenizer, texts, ends)
            masks, mask_info = None, {}
            if method.masks_neurons:
                t0 = time.perf_counter()
                scores, _ = attribution_scores(
                    model, adapter, batch, layers, hparams.amplification, hparams.prob_clamp,
                    hparams.attribution_chunk, progress=tick("attr"),
                )
                masks = {}
                for layer in layers:
                    masks[layer], mask_info[layer] = neuron_mask(
                        scores[layer], hparams.mask_bounds, hparams.mask_exponents, hparams.entropy_alpha
                    )
                timings["attribution"] = time.perf_counter() - t0

            def factor(layer: int, keys: torch.Tensor) -> torch.Tensor:
                return method.factor(FactorInputs(
                    keys=keys,
                    projector=None if projectors is None else projectors.get(layer),
                    prior_cov=(prior_keys_cov or {}).get(layer),
                    second_moment=(key_second_moment or {}).get(layer),
                ), hparams)

            t0 = time.perf_counter()
            steps = run_layers(model, adapter, batch, len(templates), layers, zres.z, factor, masks,
                               progress=tick("upd"))
            final_keys, h_final = rewrite_keys(model, adapter, batch, len(templates), layers, tap=layers[-1])
            timings["update"] = time.perf_counter() - t0
            if progress is not None:
                progress(total, total)
    finally:
        with torch.no_grad():
            for w, orig in zip(weights, originals, strict=True):
                w.copy_(orig)

    updates = []
    for st in steps:
        info = dict(mask_info.get(st.layer, {"kept": int(st.idx.numel()), "d_ff": d_ff}))
        gram_v = st.V.double().T @ st.V.double()
        gram_u = st.U.double().T @ st.U.double()
        info["delta_norm"] = float(torch.trace(gram_v @ gram_u).clamp_min(0).sqrt())
        updates.append(LayerUpdate(
            layer=st.layer,
            weight_name=adapter.weight_name(st.layer),
            idx=st.idx,
            U=st.U,
            V=st.V,
            keys=final_keys[st.layer],
            info=info,
        ))
    residual = (zres.z - h_final).norm(dim=0) / zres.delta.norm(dim=0).clamp_min(1e-12)
    info = {
        "method": hparams.method,
        "layers": layers,
        "n_requests": len(requests),
        "z_steps": zres.steps,
        "z_nll": zres.nll,
        "z_kl": zres.kl,
        "z_loss_history": zres.history,
        "delta_over_h": [float(x) for x in zres.delta.norm(dim=0) / zres.h.norm(dim=0).clamp_min(1e-12)],
        "residual_left": [float(x) for x in residual],
        "projector": "given" if projectors is not None else ("identity" if method.uses_projector else "none"),
        "timings": timings,
    }
    return EditResult(updates=updates, info=info, z=zres.z)


def _check_stats(method, layers, d_ff, projectors, prior, second) -> None:
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
        if method.uses_second_moment:
            square("key second moment", second, layer, required=True)
        if method.uses_projector:
            square("null-space projector", projectors, layer, required=projectors is not None)
            square("prior key covariance", prior, layer, required=False)
