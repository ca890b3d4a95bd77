"""The summed delta of one weight as a pair of low-rank factors (a LoRA adapter's A and B).

Σ ΔW = V_full U_fullᵀ exactly (deltas/compose.py), so the factors are exact: rank =
the summed rank of the deltas (one per fact), compressed exactly (QR + SVD) when that
exceeds what the matrix can have (d_model, or the number of neurons touched), or
truncated to a requested rank with the relative Frobenius error it costs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .compose import stacked_factors
from .delta import WeightDelta


@dataclass(frozen=True)
class LowRank:
    """ΔW (d_model × d_ff) ≈ B @ A with A (rank × d_ff) and B (d_model × rank), float32."""

    A: torch.Tensor
    B: torch.Tensor
    stacked_rank: int  # Σ of the deltas' ranks (facts in effect)
    error: float  # ||ΔW - B A||_F / ||ΔW||_F (0 when exact)

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])


def low_rank(deltas: Sequence[WeightDelta], rank: int | None = None) -> LowRank | None:
    """Factors of Σ ΔW over `deltas` (one weight), exact unless `rank` truncates them."""
    factors = stacked_factors(deltas)
    if factors is None:
        return None
    u_full, v_full = factors  # d_ff × R, d_model × R, float64
    stacked = int(u_full.shape[1])
    cols = torch.unique(torch.cat([d.idx for d in deltas if d.idx.numel()]))
    bound = min(int(v_full.shape[0]), int(cols.numel()))
    if rank is None and stacked <= bound:
        return LowRank(u_full.T.float().contiguous(), v_full.float().contiguous(), stacked, 0.0)
    # ΔW = Qv (Rv Ruᵀ) Quᵀ on the touched columns; the SVD of the small middle gives the best rank-k
    qv, rv = torch.linalg.qr(v_full)
    qu, ru = torch.linalg.qr(u_full[cols])
    p, s, wt = torch.linalg.svd(rv @ ru.T)
    keep = min(bound, rank if rank is not None else bound, int(s.numel()))
    total = float((s**2).sum())
    error = float((s[keep:] ** 2).sum() / total) ** 0.5 if total > 0 else 0.0
    root = s[:keep].sqrt()
    b = (qv @ p[:, :keep]) * root
    a_cols = (root[:, None] * wt[:keep]) @ qu.T
    a = torch.zeros(keep, u_full.shape[0], dtype=torch.float64)
    a[:, cols] = a_cols
    return LowRank(a.float().contiguous(), b.float().contiguous(), stacked, error)
