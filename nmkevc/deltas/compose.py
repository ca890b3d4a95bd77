"""Applying many factored deltas to one weight: one matrix product, canonical order.

All deltas touching a weight are concatenated along the rank axis (in the effective
set's canonical order) and applied as a single float64 product, then added to the
float64 base and cast once to the base dtype. One product is fast; float64 with a
fixed order makes the bytes depend only on the effective set.

The sums are numpy's, whoever asks: a model's weights (tensors, `apply_to_weight`) and
an export that never loads torch (arrays, `apply_array`) get the same bytes. A delta
here is anything with a weight delta's factors (`WeightDelta` with tensors, or
`stored.Factors` with arrays).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy
    import torch

    from .delta import Delta

#: base dtypes whose float64 → dtype cast numpy rounds as torch does (once, to nearest even):
#: `apply_array` serves these; a float16 or bfloat16 base is cast by torch (`apply_to_weight`)
NUMPY_EXACT_CASTS = ("float32", "float64")


def stacked_arrays(deltas: Sequence) -> tuple[numpy.ndarray, numpy.ndarray] | None:
    """(U_full d_ff × R, V_full d_model × R) float64 arrays so that Σ ΔW = V_full U_fullᵀ.

    Delta i owns columns [c_i, c_i + r_i) of both; its U goes to rows idx_i, converting to
    float64 (exactly) on the way. Both are stored rank-major (U_full is the transpose of an
    R × d_ff array): a delta's block is then r_i whole rows of memory, where a d_ff × R array
    would take a page per neuron per delta (a 1000-delta sum spent as long filling U_full
    as multiplying it)."""
    import numpy as np

    deltas = [d for d in deltas if d.idx.shape[0] and d.rank]
    if not deltas:
        return None
    d_ff, d_model = deltas[0].d_ff, deltas[0].d_model
    total_r = sum(d.rank for d in deltas)
    u_t = np.zeros((total_r, d_ff), dtype=np.float64)
    v_t = np.empty((total_r, d_model), dtype=np.float64)
    row = 0
    for d in deltas:
        u_t[row : row + d.rank, _array(d.idx)] = _array(d.U).T
        v_t[row : row + d.rank] = _array(d.V).T
        row += d.rank
    return u_t.T, v_t.T


def _array(t):
    """A delta's factor as numpy sees it: no copy, but for bfloat16 tensors (numpy lacks the
    type: widened exactly)."""
    if not hasattr(t, "detach"):
        return t
    t = t.detach().cpu()
    return (t.double() if str(t.dtype) == "torch.bfloat16" else t).numpy()


def stacked_factors(deltas: Sequence) -> tuple[torch.Tensor, torch.Tensor] | None:
    """`stacked_arrays` as tensors (sharing the arrays)."""
    import torch

    arrays = stacked_arrays(deltas)
    return None if arrays is None else (torch.from_numpy(arrays[0]), torch.from_numpy(arrays[1]))


def summed_array(deltas: Sequence) -> numpy.ndarray | None:
    """Σ ΔW (d_model × d_ff, float64 array) of deltas on one weight, or None if there are none."""
    arrays = stacked_arrays(deltas)
    if arrays is None:
        return None
    u_full, v_full = arrays
    return v_full @ u_full.T


def summed_out_in(deltas: Sequence) -> torch.Tensor | None:
    """`summed_array` as a tensor."""
    import torch

    total = summed_array(deltas)
    return None if total is None else torch.from_numpy(total)


def _oriented(total: numpy.ndarray, deltas: Sequence, shape: tuple[int, ...]) -> numpy.ndarray:
    if deltas[0].orientation == "in_out":
        total = total.T
    if tuple(total.shape) != tuple(shape):
        raise ValueError(f"delta shape {tuple(total.shape)} does not match weight {tuple(shape)}")
    return total


def apply_array(base: numpy.ndarray, deltas: Sequence) -> numpy.ndarray:
    """base + Σ ΔW for a base array of a `NUMPY_EXACT_CASTS` dtype, computed in float64 and
    cast to the base dtype (C order); base if no deltas."""
    import numpy as np

    if str(base.dtype) not in NUMPY_EXACT_CASTS:
        raise ValueError(f"apply_array casts to {', '.join(NUMPY_EXACT_CASTS)} only, not {base.dtype}")
    total = summed_array(deltas)
    if total is None:
        return base
    total = _oriented(total, deltas, base.shape)
    # the float64 sum in place (addition commutes; the base widens exactly): no two more copies
    np.add(total, base, out=total)
    return np.ascontiguousarray(total.astype(base.dtype))


def apply_to_weight(base: torch.Tensor, deltas: Sequence) -> torch.Tensor:
    """base + Σ ΔW, computed in float64 and cast to the base dtype; base if no deltas."""
    import torch

    total = summed_array(deltas)
    if total is None:
        return base
    total = torch.from_numpy(_oriented(total, deltas, tuple(base.shape)))
    # the float64 sum in place (addition commutes; the base widens exactly): no two more copies
    return total.add_(base).to(base.dtype).contiguous()


def combine(deltas: Sequence[Delta]) -> Delta:
    """One delta equal to the sum of several: per weight, the union of neuron indices,
    factors concatenated along the rank axis, keys along the key axis."""
    import torch

    from .delta import Delta, WeightDelta

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
