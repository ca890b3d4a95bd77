"""Applying many factored deltas to one weight: one matrix product, canonical order.

All deltas touching a weight are concatenated along the rank axis (in the effective
set's canonical order) and applied as a single float64 product, then added to the
float64 base and cast once to the base dtype. One product is fast; float64 with a
fixed order makes the bytes depend only on the effective set.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .delta import Delta, WeightDelta


def stacked_factors(deltas: Sequence[WeightDelta]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(U_full d_ff × R, V_full d_model × R) in float64 so that Σ ΔW = V_full U_fullᵀ.

    Delta i owns columns [c_i, c_i + r_i) of both; its U goes to rows idx_i. Both are torch's
    own buffers (the product sees the layout and alignment it always has, so its bytes do
    not change), filled through numpy views: a row-indexed block store per delta, converting
    to float64 (exactly) on the way, where torch would copy each factor to float64 first and
    U_full went through its transpose (~2x slower for 1000 deltas)."""
    deltas = [d for d in deltas if d.idx.numel() and d.rank]
    if not deltas:
        return None
    d_ff, d_model = deltas[0].d_ff, deltas[0].d_model
    total_r = sum(d.rank for d in deltas)
    u_full = torch.zeros(d_ff, total_r, dtype=torch.float64)
    v_full = torch.empty(d_model, total_r, dtype=torch.float64)
    u, v = u_full.numpy(), v_full.numpy()
    col = 0
    for d in deltas:
        u[_numpy(d.idx), col : col + d.rank] = _numpy(d.U)
        v[:, col : col + d.rank] = _numpy(d.V)
        col += d.rank
    return u_full, v_full


def _numpy(t: torch.Tensor):
    """A delta's tensor as numpy sees it: no copy, but for bfloat16 (which numpy lacks: widened exactly)."""
    t = t.detach().cpu()
    return (t.double() if t.dtype == torch.bfloat16 else t).numpy()


def summed_out_in(deltas: Sequence[WeightDelta]) -> torch.Tensor | None:
    """Σ ΔW (d_model × d_ff, float64) of deltas on one weight, or None if there are none."""
    factors = stacked_factors(deltas)
    if factors is None:
        return None
    u_full, v_full = factors
    return v_full @ u_full.T


def apply_to_weight(base: torch.Tensor, deltas: Sequence[WeightDelta]) -> torch.Tensor:
    """base + Σ ΔW, computed in float64 and cast to the base dtype; base if no deltas."""
    total = summed_out_in(deltas)
    if total is None:
        return base
    if deltas[0].orientation == "in_out":
        total = total.T
    if tuple(total.shape) != tuple(base.shape):
        raise ValueError(f"delta shape {tuple(total.shape)} does not match weight {tuple(base.shape)}")
    # the float64 sum in place (addition commutes; the base widens exactly): no two more copies
    return total.add_(base).to(base.dtype).contiguous()


def combine(deltas: Sequence[Delta]) -> Delta:
    """One delta equal to the sum of several: per weight, the union of neuron indices,
    factors concatenated along the rank axis, keys along the key axis."""
    by_name: dict[str, list[WeightDelta]] = {}
    for d in deltas:
        for w in d.weights:
            by_name.setdefault(w.name, []).append(w)
    out = []
    for name, ws in sorted(by_name.items()):
        idx = torch.unique(torch.cat([w.idx for w in ws]))  # sorted
        pos = {int(i): j for j, i in enumerate(idx.tolist())}
        total_r = sum(w.rank for w in ws)
        U = torch.zeros(len(idx), total_r, dtype=torch.float32)
        col = 0
        for w in ws:
            rows = torch.tensor([pos[int(i)] for i in w.idx.tolist()], dtype=torch.int64)
            U[rows, col : col + w.rank] = w.U.float()
            col += w.rank
        V = torch.cat([w.V.float() for w in ws], dim=1)
        keys = [w.K.float() for w in ws if w.K is not None]
        K = torch.cat(keys, dim=1) if keys else None
        w0 = ws[0]
        out.append(WeightDelta(name, w0.layer, w0.orientation, w0.d_model, w0.d_ff, idx, U, V, K,
                               {"combined": [w.info for w in ws]}))
    return Delta(tuple(out), {"combined": len(deltas)})
