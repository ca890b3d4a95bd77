"""Step 4: the layer-by-layer weight update (NMKE, AlphaEdit and MEMIT in one path).

Per layer l_i (ascending): keys K with the *current* weights (so the residual already
written by earlier layers is seen), R = (z − h_{l_m}) / (m − i + 1), a neuron-space
factor U, then ΔW = R Uᵀ on the masked neurons, applied in place before the next
layer's keys. The update is only ever handled in factored form (idx, U[idx], R).
Each layer reports the share of its residual it actually wrote, ‖ΔW k‖ / ‖r‖ on the
edit's own keys (a masked or strongly regularised layer writes less than its share).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ..models.adapters import ArchAdapter
from ..models.tokens import Batch
from .hooks import first_input, hidden_of, hooks, run_until, stop_after
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


@torch.no_grad()
def rewrite_keys(
    model,
    adapter: ArchAdapter,
    batch: Batch,
    n_templates: int,
    layers: Sequence[int],
    tap: int | None = None,
    key_weights: torch.Tensor | None = None,
) -> tuple[dict[int, torch.Tensor], torch.Tensor | None]:
    """Keys K_l (d_ff × n) at the subject's last token, averaged over the templates with
    `key_weights` (T, summing to 1; None = plain mean; see `tokens.template_weights`) — rows are
    request-major, see `tokens.templated` — and optionally the output of layer `tap` at the
    subject's last token of each request's first-template row (d_model × n)."""
    rows, spos = batch.rows, batch.subject_pos
    n = batch.input_ids.shape[0] // n_templates
    w = torch.full((n_templates,), 1.0 / n_templates) if key_weights is None else key_weights.float()
    keys: dict[int, torch.Tensor] = {}
    out: dict[str, torch.Tensor] = {}

    def key_hook(layer):
        def fn(_m, args):
            k = first_input(args)[rows, spos].float()
            keys[layer] = torch.einsum("ntd,t->dn", k.view(n, n_templates, -1), w).contiguous()

        return fn

    def tap_hook(_m, _a, output):
        first = torch.arange(n) * n_templates
        out["h"] = hidden_of(output)[first, spos[first]].float().T.contiguous()

    pre = {adapter.mlp_out_module(model, layer): key_hook(layer) for layer in layers}
    post = {adapter.layer(model, tap): tap_hook} if tap is not None else {}
    deepest = max([*layers, *([tap] if tap is not None else [])])
    with hooks(pre=pre, post=post), stop_after(adapter.layer(model, deepest)):
        run_until(model, batch)
    return keys, out.get("h")


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
                 frobenius: float = 0.0) -> torch.Tensor:
    """U = (λ0 Σ + λ_F I + K Kᵀ)⁻¹ K  (d_ff × n, float64); λ_F is ENCORE's Frobenius-norm term
    λ_F ‖ΔW‖²_F on the update (0: MEMIT as published)."""
    k = keys.double()
    a = lambda0 * second_moment.double() + k @ k.T
    if frobenius:
        a = a + frobenius * torch.eye(a.shape[0], dtype=a.dtype)
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
) -> list[LayerStep]:
    """Apply the update layer by layer (in place) and return each layer's factored ΔW.

    `factor(layer, K, mask)` solves for U (d_ff × n, zero outside the mask); `masks[layer]`
    (bool d_ff) selects the rows written (None = all neurons); `key_weights` as in `rewrite_keys`."""
    steps = []
    m = len(layers)
    for i, layer in enumerate(layers):
        keys, h = rewrite_keys(model, adapter, batch, n_templates, [layer], tap=layers[-1],
                               key_weights=key_weights)
        k = keys[layer]
        resid = (z.float() - h) / (m - i)
        mask = masks.get(layer) if masks is not None else None
        solved = factor(layer, k, mask)
        idx = torch.nonzero(mask, as_tuple=False)[:, 0] if mask is not None else torch.arange(k.shape[0])
        u_rows = solved.U[idx].float().contiguous()
        info = {**solved.info, "written_fraction": written_fraction(u_rows, k[idx], resid)}
        add_factored(adapter, adapter.weight(model, layer), idx, u_rows, resid)
        steps.append(LayerStep(layer=layer, idx=idx.long(), U=u_rows, V=resid.contiguous(), info=info))
        if progress is not None:
            progress(i + 1)
    return steps
