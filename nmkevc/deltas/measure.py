"""Measuring deltas without densifying them: neuron masses and mask-conflict scores.

A mask conflict is scored per weight from each side's *summed* delta:
- share_X: the fraction of side X's delta energy (squared column norms) that lies on
  neurons the other side also touches;
- agreement: the cosine between the two sides' deltas restricted to those shared
  neurons (+1 they push the same way, -1 they fight);
- score = sqrt(share_A · share_B) · (1 − agreement) / 2, in [0, 1]: zero for disjoint
  masks or aligned pushes, one for the same neurons pushed in opposite directions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from .compose import stacked_factors
from .delta import WeightDelta

DEFAULT_MASK_THRESHOLD = 0.5


@dataclass(frozen=True)
class MaskOverlap:
    weight: str
    layer: int
    neurons_a: int
    neurons_b: int
    shared: int
    share_a: float
    share_b: float
    agreement: float
    score: float
    conflict: bool

    def to_json(self) -> dict:
        return asdict(self)


def _mass(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    gram = v.T @ v
    return ((u @ gram) * u).sum(dim=1).clamp_min(0)


def neuron_masses(deltas: Sequence[WeightDelta]) -> torch.Tensor | None:
    """Squared column norms (d_ff,) of Σ ΔW over deltas on one weight."""
    f = stacked_factors(deltas)
    return None if f is None else _mass(*f)


def mask_overlap(
    a: Sequence[WeightDelta], b: Sequence[WeightDelta], threshold: float = DEFAULT_MASK_THRESHOLD
) -> MaskOverlap | None:
    """Score how two sides' deltas on the same weight share and fight over neurons."""
    fa, fb = stacked_factors(a), stacked_factors(b)
    if fa is None or fb is None:
        return None
    (ua, va), (ub, vb) = fa, fb
    ma, mb = _mass(ua, va), _mass(ub, vb)
    eps = 1e-30
    on_a, on_b = ma > eps * max(float(ma.max()), eps), mb > eps * max(float(mb.max()), eps)
    shared = on_a & on_b
    share_a = float(ma[shared].sum() / ma.sum().clamp_min(eps))
    share_b = float(mb[shared].sum() / mb.sum().clamp_min(eps))
    if bool(shared.any()):
        cross = va.T @ vb  # Ra × Rb
        inner = float(((ua[shared] @ cross) * ub[shared]).sum())
        norm = float((ma[shared].sum() * mb[shared].sum()).sqrt())
        agreement = inner / norm if norm > 0 else 0.0
    else:
        agreement = 0.0
    agreement = max(-1.0, min(1.0, agreement))
    score = (share_a * share_b) ** 0.5 * (1.0 - agreement) / 2.0
    return MaskOverlap(
        weight=a[0].name,
        layer=a[0].layer,
        neurons_a=int(on_a.sum()),
        neurons_b=int(on_b.sum()),
        shared=int(shared.sum()),
        share_a=round(share_a, 6),
        share_b=round(share_b, 6),
        agreement=round(agreement, 6),
        score=round(score, 6),
        conflict=score > threshold,
    )
