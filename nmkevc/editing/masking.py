"""Step 3: the entropy-guided dynamic sparse mask (general ∪ specific neurons).

Ties: both selections keep every neuron whose statistic is ≥ the quantile, as the rule
is written. The "general" count c_i is an integer in [0, P], so ties at the threshold
are the normal case and are all kept (that is why masks exceed ρ); when the scores carry
no information at all (a constant matrix) every neuron ties and the mask is full, i.e.
the edit falls back to the unmasked AlphaEdit update rather than to an arbitrary subset.
"""

from __future__ import annotations

import math

import torch

#: Σ max(b, 0) at or below this counts as "no positive attribution" (ρ_b falls back to its lower bound).
ZERO_MASS = 1e-9


def _norm_entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy of distributions along the last dim, divided by log D (0 when D < 2)."""
    d = p.shape[-1]
    if d < 2:
        return torch.zeros(p.shape[:-1], dtype=p.dtype)
    return torch.special.entr(p).sum(-1) / math.log(d)


def entropy_ratios(
    scores: torch.Tensor,
    bounds: tuple[float, float] = (0.3, 0.4),
    exponents: tuple[float, float] = (3.0, 2.0),
    alpha: float = 30.0,
) -> dict:
    """ρ_r, ρ_b and the normalised entropies H_r, H_b of a score matrix S (P × D)."""
    s = scores.double()
    lo, hi = bounds
    q = torch.softmax(alpha * (s - s.max(dim=1, keepdim=True).values), dim=1)
    h_r = float(_norm_entropy(q).mean())
    b = s.max(dim=0).values.clamp_min(0)
    mass = float(b.sum())
    if mass <= ZERO_MASS:
        h_b, rho_b = 0.0, lo
    else:
        h_b = float(_norm_entropy(b / mass))
        rho_b = lo + (hi - lo) * min(max(h_b, 0.0), 1.0) ** exponents[1]
    rho_r = lo + (hi - lo) * min(max(h_r, 0.0), 1.0) ** exponents[0]
    return {"rho_r": rho_r, "rho_b": rho_b, "H_r": h_r, "H_b": h_b, "zero_mass": mass <= ZERO_MASS}


def neuron_mask(
    scores: torch.Tensor,
    bounds: tuple[float, float] = (0.3, 0.4),
    exponents: tuple[float, float] = (3.0, 2.0),
    alpha: float = 30.0,
) -> tuple[torch.Tensor, dict]:
    """The boolean neuron mask (D,) of one layer and its info dict
    (kept, d_ff, rho_r, rho_b, H_r, H_b, n_general, n_specific, zero_mass)."""
    if scores.dim() != 2 or scores.shape[0] < 1 or scores.shape[1] < 1:
        raise ValueError(f"score matrix must be prompts × neurons, got shape {tuple(scores.shape)}")
    s = scores.double()
    info = entropy_ratios(s, bounds, exponents, alpha)
    z = (s - s.mean(dim=1, keepdim=True)) / (s.std(dim=1, unbiased=False, keepdim=True) + 1e-6)
    count = (z > 0).sum(dim=0).double()  # c_i
    general = count >= torch.quantile(count, 1.0 - info["rho_r"])
    burst = s.max(dim=0).values  # b_i
    specific = burst >= torch.quantile(burst, 1.0 - info["rho_b"])
    mask = general | specific
    info.update(
        kept=int(mask.sum()),
        d_ff=int(mask.numel()),
        n_general=int(general.sum()),
        n_specific=int(specific.sum()),
    )
    return mask, info
