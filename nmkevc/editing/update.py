"""Step 4: the layer-by-layer weight update (NMKE, AlphaEdit and MEMIT in one path).

Per layer l_i (ascending): keys K with the *current* weights (so the residual already
written by earlier layers is seen), R = (z − h_{l_m}) / (m − i + 1), a neuron-space
factor U, then ΔW = R Uᵀ on the masked neurons, applied in place before the next
layer's keys. The update is only ever handled in factored form (idx, U[idx], R).
Each layer reports the share of its residual it actually wrote, ‖ΔW k‖ / ‖r‖ on the
edit's own keys (a masked or strongly regularised layer writes less than its share).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ..models.adapters import ArchAdapter
from ..models.tokens import Batch
from .hooks import LayerCall, first_input, hidden_of, hooks, recorded_calls, run_until, stop_after
from .nullspace import NullspaceRule


@dataclass(frozen=True)
class Factor:
    """A solve's result: U (d_ff × n, float64; rows outside the mask are zero) and what it used
    (e.g. the λ it resolved), which the engine reports per layer."""

    U: torch.Tensor
    info: dict


@dataclass
class LayerStep:
    layer: int
    idx: torch.Tensor  # (k,) int64 sorted: the neurons written
    U: torch.Tensor  # (k, n) float32
    V: torch.Tensor  # (d_model, n) float32 (= R)
    info: dict = field(default_factory=dict)  # the solve's (e.g. λ) and the written fraction


class LayerInputs:
    """Step 4's forward passes: each edited layer's keys and the last edited layer's output h,
    under the weights edited so far, without re-running what an edit did not change.

    As the method is written, every layer's keys and h come from a pass from the embeddings.
    But an edit of layer e (its MLP output matrix W) changes no layer input at or below e and no
    key at e, and changes e's output by exactly ΔW a at every position, a being the MLP
    activations W reads (e's keys at every token). So the input of every layer from the first
    edited one up is kept for all rows; an edit adds ΔW a to e's output (a kept from the pass
    that read e's keys) instead of re-running e, and only the layers above it are re-run: by all
    rows up to the layer whose keys are asked for, by the rewrite rows (each request's first
    template) alone on up to the tap. Rows end at the subject's last token, the only position
    read (causal attention: nothing after it changes it). The arithmetic is a fresh pass's, in
    fewer layers: SmolLM2 edited at 3..7 runs all rows through 4 + 4 layers instead of 6 × 8,
    and the rewrite rows (1/T of them) through 8 + 3 + 2 + 1.

    Keys K_l (d_ff × n) are read at the subject's last token and averaged over the templates with
    `key_weights` (T, summing to 1; None = plain mean; see `tokens.template_weights`); rows are
    request-major (see `tokens.templated`). h (d_model × n) is the output of layer `tap`."""

    def __init__(self, model, adapter: ArchAdapter, batch: Batch, n_templates: int, layers: Sequence[int],
                 tap: int, key_weights: torch.Tensor | None = None):
        self.model, self.adapter, self.tap = model, adapter, tap
        self.n_t = n_templates
        self.n = batch.input_ids.shape[0] // n_templates
        self.w = torch.full((n_templates,), 1.0 / n_templates) if key_weights is None else key_weights.float()
        self.layers = sorted(set(layers))
        self.low, top = self.layers[0], max(max(self.layers), tap)
        self.modules = list(adapter.layer_modules(model))[: top + 1]
        self.rows = batch.through_subject()
        self.rewrite = self.rows.select(torch.arange(self.n) * n_templates)
        self.seconds = 0.0  # time spent here: the engine reports it as the "keys" phase
        self.keys_at: dict[int, torch.Tensor] = {}  # keys still valid under the current weights
        #: the MLP activations (all rows, every position) of the one layer whose keys were read
        #: last, while they are current: what an edit of that layer adds to its output is ΔW a
        self.acts: tuple[int, torch.Tensor] | None = None
        # inputs[j]: the input of layer j (all rows), low ≤ j ≤ top + 1 (top + 1: top's output)
        self.inputs: dict[int, torch.Tensor] = {}
        t0 = time.perf_counter()
        # the rewrite rows through the tap: how every layer is called, and h before any edit
        self.rewrite_calls, h0 = self._record(self.rewrite, top)
        self.h0: torch.Tensor | None = h0
        # all rows through the first edited layer only, when the layers above are called as it is
        # (one mask, one rotary table: most decoders); else through the tap, to record their calls
        shared = all(_same_call(self.rewrite_calls[j], self.rewrite_calls[self.low]) for j in range(self.low, top + 1))
        self.calls, _ = self._record(self.rows, self.low if shared else top, keep=True)
        if shared:
            first = self.calls[self.low]
            self.calls += [LayerCall(m, first.args, first.kwargs) for m in self.modules[self.low + 1:]]
        self.fresh = max(self.inputs)  # inputs[j] hold the current weights' values for every j ≤ fresh
        self.seconds += time.perf_counter() - t0

    @torch.no_grad()
    def keys(self, layer: int) -> torch.Tensor:
        """K_layer (d_ff × n) under the current weights."""
        if layer not in self.keys_at:
            t0 = time.perf_counter()
            self._advance(layer)
            self.seconds += time.perf_counter() - t0
        return self.keys_at[layer]

    @torch.no_grad()
    def output(self) -> torch.Tensor:
        """h (d_model × n): the tap's output at the subject's last token of each rewrite row."""
        if self.h0 is not None:  # nothing written yet
            return self.h0
        t0 = time.perf_counter()
        spos = self.rewrite.subject_pos
        r = torch.arange(self.n)
        if self.fresh > self.tap:
            hidden = self.inputs[self.tap + 1][r * self.n_t, spos]
        else:
            hidden = self.inputs[self.fresh][r * self.n_t, : self.rewrite.input_ids.shape[1]]
            for j in range(self.fresh, self.tap + 1):
                hidden = self.rewrite_calls[j](hidden)
            hidden = hidden[r, spos]
        self.seconds += time.perf_counter() - t0
        return hidden.float().T.contiguous()

    @torch.no_grad()
    def write(self, layer: int, idx: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> None:
        """W_layer[:, idx] += V Uᵀ (in place, `add_factored`), and keep the inputs current: with
        the layer's activations at hand its output gains ΔW a, where ΔW is the change the weight
        really took (in its own dtype); everything above it is stale."""
        view = self.adapter.to_out_in(self.adapter.weight(self.model, layer))
        before = view[:, idx].float()
        add_factored(self.adapter, self.adapter.weight(self.model, layer), idx, u, v)
        self.h0 = None
        t0 = time.perf_counter()
        self.keys_at = {k: x for k, x in self.keys_at.items() if k <= layer}
        if self.acts is not None and self.acts[0] == layer and self.fresh > layer:
            change = view[:, idx].float() - before  # (d_model, k)
            out = self.inputs[layer + 1]
            out += (self.acts[1][..., idx].float() @ change.T).to(out.dtype)
            self.fresh = layer + 1
        else:
            self.fresh = min(self.fresh, layer)
        self.acts = None
        self.seconds += time.perf_counter() - t0

    def _key_hooks(self, act_layer: int) -> dict:
        spos, rows = self.rows.subject_pos, self.rows.rows

        def grab(layer):
            def fn(_m, args):
                a = first_input(args)
                k = a[rows, spos].float()
                self.keys_at[layer] = torch.einsum("ntd,t->dn", k.view(self.n, self.n_t, -1), self.w).contiguous()
                if layer == act_layer:
                    self.acts = (layer, a.detach())

            return fn

        return {self.adapter.mlp_out_module(self.model, layer): grab(layer) for layer in self.layers}

    def _record(self, batch: Batch, upto: int, keep: bool = False) -> tuple[list[LayerCall], torch.Tensor]:
        """One pass of `batch` through layer `upto`: how each layer was called and, for the rewrite
        rows, h (the tap's output at each row's subject token) when the pass reaches the tap;
        `keep` (all rows): every layer input from `low` up, the keys and `low`'s activations instead."""
        modules = self.modules[: upto + 1]
        inputs: list[torch.Tensor | None] | None = [None] * len(modules) if keep else None
        got = {}

        def grab_out(_m, _a, out):
            got["out"] = hidden_of(out).detach()

        pre = self._key_hooks(self.low) if keep else {}
        with hooks(pre=pre, post={modules[-1]: grab_out}), recorded_calls(modules, inputs) as calls, \
                stop_after(modules[-1]):
            run_until(self.model, batch)
        if inputs is not None:
            self.inputs = {j: inputs[j] for j in range(self.low, len(modules))}
            self.inputs[len(modules)] = got["out"]
        h = None if keep or upto != self.tap else got["out"][batch.rows, batch.subject_pos].float().T.contiguous()
        return list(calls), h

    def _advance(self, layer: int) -> None:
        """Re-run every row from the lowest stale layer input through `layer`, reading the keys of
        the edited layers on the way and `layer`'s activations."""
        start = min(self.fresh, layer)
        with hooks(pre=self._key_hooks(layer)):
            for j in range(start, layer + 1):
                self.inputs[j + 1] = self.calls[j](self.inputs[j])
        self.fresh = max(self.fresh, layer + 1)


def _same_call(a: LayerCall, b: LayerCall) -> bool:
    """Two layers called with the very same arguments besides the hidden state (the same mask
    and rotary objects, equal plain values): one's call can stand for the other's."""
    def same(x, y) -> bool:
        return x is y or (isinstance(x, (bool, int, float, str)) and type(x) is type(y) and x == y)

    return (len(a.args) == len(b.args) and all(same(x, y) for x, y in zip(a.args, b.args, strict=True))
            and a.kwargs.keys() == b.kwargs.keys() and all(same(a.kwargs[k], b.kwargs[k]) for k in a.kwargs))


def nullspace_factor(
    keys: torch.Tensor,
    projector: torch.Tensor | None,
    prior_cov: torch.Tensor | None,
    ridge: float,
) -> torch.Tensor:
    """U = (P (K Kᵀ + C) + λ I)⁻¹ P K  (d_ff × n, float64); P None = identity, C None = 0.

    Without C (a first edit) the d_ff × d_ff system is never formed: with X = P K,
    (X Kᵀ + λ I)⁻¹ X = X (Kᵀ X + λ I)⁻¹ (push-through identity), an n × n solve."""
    k = keys.double()
    d = k.shape[0]
    x = k if projector is None else projector.double() @ k
    if prior_cov is None:
        small = k.T @ x + ridge * torch.eye(k.shape[1], dtype=torch.float64)
        return torch.linalg.solve(small, x.T).T
    gram = k @ k.T + prior_cov.double()
    a = gram if projector is None else projector.double() @ gram
    a = a + ridge * torch.eye(d, dtype=torch.float64)
    return torch.linalg.solve(a, x)


def relative_ridge(keys: torch.Tensor, projector: torch.Tensor | None, scale: float) -> float:
    """λ = scale · mean over the keys of kᵀ P k (P None = identity): λ on the keys' own scale,
    so that a lone key of a full-mask layer writes 1 / (1 + scale) of its share on any model."""
    k = keys.double()
    x = k if projector is None else projector.double() @ k
    # floored: keys wholly outside the null space (PK = 0) must give U = 0, not a singular solve
    return max(float(scale) * float((k * x).sum(0).mean()), 1e-12)


def zero_outside(u: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """U with the rows outside `mask` set to zero (None = all rows kept)."""
    if mask is None:
        return u
    return u * mask.to(u.dtype)[:, None]


def masked_projected_factor(
    keys: torch.Tensor,
    second_moment: torch.Tensor,
    prior_cov: torch.Tensor | None,
    mask: torch.Tensor,
    ridge: Callable[[torch.Tensor, torch.Tensor], float],
    rule: NullspaceRule,
) -> tuple[torch.Tensor, float, int]:
    """The projected masked update: AlphaEdit's solve on the mask's rows S alone, with the
    null-space projector P_S of the preserved keys *restricted to S* (from Σ_SS, by the rule
    of the whole-layer projector),

        U_S = (P_S (K_S K_Sᵀ + C_SS) + λ I)⁻¹ P_S K_S,   U = 0 outside S.

    Zeroing rows of the whole-layer solution (the published form) takes it out of the null
    space: ΔW k₀ = R Uᵀ k₀ no longer vanishes for preserved keys k₀. Here ΔW k₀ = R U_Sᵀ k₀_S,
    and U_S lies in the null space of Σ_SS, so the preserved keys are protected as AlphaEdit
    protects them, on the mask's neurons only. `ridge(K_S, P_S)` gives λ on the sub-problem's
    scale. Returns (U, λ, directions P_S keeps)."""
    from .covariance import nullspace_projector

    sel = torch.nonzero(mask, as_tuple=False)[:, 0]
    p_s, kept = nullspace_projector(second_moment.double()[sel][:, sel], rule)
    k_s = keys.double()[sel]
    lam = ridge(k_s, p_s)
    c_s = None if prior_cov is None else prior_cov.double()[sel][:, sel]
    u = torch.zeros(keys.shape[0], keys.shape[1], dtype=torch.float64)
    u[sel] = nullspace_factor(k_s, p_s, c_s, lam)
    return u, lam, kept


def masked_nullspace_factor(
    keys: torch.Tensor,
    projector: torch.Tensor | None,
    prior_cov: torch.Tensor | None,
    ridge: float,
    mask: torch.Tensor,
) -> torch.Tensor:
    """The compensated masked update: the system A U = P K of `nullspace_factor` with the
    unknowns restricted to the mask's rows S and its equations to the same rows,

        (P (K Kᵀ + C) + λ I)_SS U_S = (P K)_S,   U = 0 outside S   (d_ff × n, float64).

    With P = I this is exactly the minimiser of ‖ΔW K − R‖² + ‖ΔW K_C‖² + λ‖ΔW‖² over updates
    ΔW = R Uᵀ whose columns outside S are zero; with P, each step of AlphaEdit's projected
    gradient is kept on the mask's coordinates. For one key it is the published masked U
    rescaled by (kᵀPk + λ) / (k_Sᵀ(Pk)_S + λ): the same direction, writing its full share as if
    the mask's neurons were all there is. Without C the |S| × |S| system is never formed."""
    k = keys.double()
    sel = torch.nonzero(mask, as_tuple=False)[:, 0]
    x = k if projector is None else projector.double() @ k
    x_s, k_s = x[sel], k[sel]
    if prior_cov is None:  # (X_S K_Sᵀ + λI)⁻¹ X_S = X_S (K_Sᵀ X_S + λI)⁻¹
        small = k_s.T @ x_s + ridge * torch.eye(k.shape[1], dtype=torch.float64)  # not symmetric
        u_s = torch.linalg.solve(small.T, x_s.T).T
    else:
        gram_cols = k @ k_s.T + prior_cov.double()[:, sel]  # (K Kᵀ + C)[:, S]
        a = gram_cols[sel] if projector is None else projector.double()[sel] @ gram_cols
        a = a + ridge * torch.eye(sel.numel(), dtype=torch.float64)
        u_s = torch.linalg.solve(a, x_s)
    u = torch.zeros_like(x)
    u[sel] = u_s
    return u


def written_fraction(u_rows: torch.Tensor, keys_rows: torch.Tensor, resid: torch.Tensor) -> float | None:
    """Mean over requests of ‖ΔW k_j‖ / ‖r_j‖ with ΔW = R Uᵀ on the rows written (`u_rows`,
    `keys_rows` = those rows of U and K): how much of its share of z − h a layer wrote.
    Requests whose residual is ~0 (nothing left to write) are left out; None if all are."""
    r = resid.double()
    written = r @ (u_rows.double().T @ keys_rows.double())  # column j = ΔW k_j
    norms = r.norm(dim=0)
    live = norms > 1e-8 * (1.0 + float(norms.max()))
    if not bool(live.any()):
        return None
    return float((written.norm(dim=0)[live] / norms[live]).mean())


def memit_factor(keys: torch.Tensor, second_moment: torch.Tensor, lambda0: float,
                 frobenius: float = 0.0, prior: torch.Tensor | None = None) -> torch.Tensor:
    """U = (λ0 Σ + λ_F I + C + K Kᵀ)⁻¹ K  (d_ff × n, float64); λ_F is ENCORE's Frobenius-norm term
    λ_F ‖ΔW‖²_F on the update, C (already weighted) the earlier edits' keys that ENCORE's MEMIT
    keeps (0 / None: MEMIT as published)."""
    k = keys.double()
    a = lambda0 * second_moment.double() + k @ k.T
    if frobenius:
        a = a + frobenius * torch.eye(a.shape[0], dtype=a.dtype)
    if prior is not None:
        a = a + prior.double()
    return torch.linalg.solve(a, k)


@torch.no_grad()
def add_factored(adapter: ArchAdapter, weight: torch.Tensor, idx: torch.Tensor, u: torch.Tensor,
                 v: torch.Tensor) -> None:
    """W[:, idx] += V Uᵀ in the (d_model × d_ff) view, whatever the storage orientation."""
    view = adapter.to_out_in(weight)
    view[:, idx] += (v.float() @ u.float().T).to(weight.dtype)


def run_layers(
    model,
    adapter: ArchAdapter,
    batch: Batch,
    n_templates: int,
    layers: Sequence[int],
    z: torch.Tensor,
    factor: Callable[[int, torch.Tensor, torch.Tensor | None], Factor],
    masks: dict[int, torch.Tensor] | None,
    progress: Callable[[int], None] | None = None,
    key_weights: torch.Tensor | None = None,
) -> tuple[list[LayerStep], dict[int, torch.Tensor], torch.Tensor, float]:
    """Apply the update layer by layer (in place) and return each layer's factored ΔW, then every
    layer's keys and h at the last edited layer under all the new weights, and the seconds the
    forward passes took (`LayerInputs`).

    `factor(layer, K, mask)` solves for U (d_ff × n, zero outside the mask); `masks[layer]`
    (bool d_ff) selects the rows written (None = all neurons); `key_weights` as in `LayerInputs`."""
    steps = []
    m = len(layers)
    state = LayerInputs(model, adapter, batch, n_templates, layers, tap=layers[-1], key_weights=key_weights)
    for i, layer in enumerate(layers):
        k = state.keys(layer)
        resid = (z.float() - state.output()) / (m - i)
        mask = masks.get(layer) if masks is not None else None
        solved = factor(layer, k, mask)
        idx = torch.nonzero(mask, as_tuple=False)[:, 0] if mask is not None else torch.arange(k.shape[0])
        u_rows = solved.U[idx].float().contiguous()
        info = {**solved.info, "written_fraction": written_fraction(u_rows, k[idx], resid)}
        state.write(layer, idx, u_rows, resid)
        steps.append(LayerStep(layer=layer, idx=idx.long(), U=u_rows, V=resid.contiguous(), info=info))
        if progress is not None:
            progress(i + 1)
    final_keys = {layer: state.keys(layer) for layer in layers}
    return steps, final_keys, state.output(), state.seconds
