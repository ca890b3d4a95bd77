"""How far a model state has drifted from its base: the figures every commit records.

Sequential edits degrade a model, and a long history must not do it silently. Two figures,
both cheap (no pass over any text: they use the key statistics Σ_l the edit already has):

- norm growth of each edited matrix, ‖W_base + ΣΔ‖_F / ‖W_base‖_F − 1: solved targets and
  edited weights amplify each other's norms (the collapse mechanism of NAS, arXiv 2602.02543);
- disturbance of generic text, sqrt(tr(ΔW Σ ΔWᵀ) / tr(W Σ Wᵀ)) with Σ = E[k kᵀ] of the base's
  keys over the statistics corpus: the relative RMS change of the layer's output on ordinary
  text, for this commit's delta ("batch") and for all deltas since the base ("cumulative").
  The null-space projection exists to keep it small; held-out perplexity drifts as it grows
  (docs/results.md, the lifelong diagnosis).
Per layer, then summarised: the largest norm growth and the mean disturbance over layers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from ..repo.repository import Repo
from .bench import Workbench

if TYPE_CHECKING:
    import torch

    from ..deltas.delta import Delta

#: the summary keys a commit's `info["health"]` carries (per layer under "layers")
SUMMARY = ("norm_growth", "disturbance", "disturbance_cumulative")


def output_energy(m: torch.Tensor, sigma: torch.Tensor) -> float:
    """tr(M Σ Mᵀ) for M as (d_model, d_ff): the mean squared output of M over keys whose
    second moment is Σ."""
    m = m.to(sigma.dtype)
    return float(((m @ sigma) * m).sum())


def factored_energy(u: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor) -> float:
    """`output_energy` of M = V Uᵀ (U d_ff × R, V d_model × R) without forming M:
    Σ (VᵀV ⊙ Uᵀ Σ U), d_ff² R products instead of d_model d_ff² (fewer while R < d_model)."""
    u, v = u.to(sigma.dtype), v.to(sigma.dtype)
    return float(((v.T @ v) * (u.T @ (sigma @ u))).sum())


def norm_growth(base: torch.Tensor, u: torch.Tensor, v: torch.Tensor, dense: torch.Tensor | None) -> float:
    """‖W + V Uᵀ‖_F / ‖W‖_F − 1, from the factors while they are thin:
    ‖W + V Uᵀ‖² = ‖W‖² + 2 Σ (W U ⊙ V) + Σ (VᵀV ⊙ UᵀU)."""
    if dense is not None:
        return float((base + dense).norm() / base.norm()) - 1.0
    w2 = float(base.pow(2).sum())
    grown = w2 + 2.0 * float(((base @ u) * v).sum()) + float(((v.T @ v) * (u.T @ u)).sum())
    return (max(grown, 0.0) / w2) ** 0.5 - 1.0


def state_health(bench: Workbench, base_id: str, commits: list[str], sigmas: Mapping[int, torch.Tensor],
                 extra: Sequence[str] = (), batch: Delta | None = None) -> dict:
    """The health figures of the state `commits` (+ stored deltas `extra`) for the layers that
    `sigmas` covers, and of `batch` (this commit's own delta) where given."""
    import torch

    from ..deltas.compose import stacked_factors

    repo, adapter = bench.repo, bench.adapter(base_id)
    weights = bench.weights(base_id)
    own = {w.name: w for w in (batch.weights if batch is not None else ())}
    layers: dict[str, dict] = {}
    for name, entries in sorted(repo.plan_of(commits, extra).items()):
        layer = entries[0][1].layer
        sigma = sigmas.get(layer)
        base = adapter.to_out_in(weights.get(name)).to(torch.float64)
        # every delta since the base as V Uᵀ (float64, as materialisation sums them); formed
        # densely only once its rank R passes d_model, where the dense products are the cheaper
        factors = stacked_factors([w for _, w in entries])
        if factors is None:
            factors = (base.new_zeros(base.shape[1], 0), base.new_zeros(base.shape[0], 0))
        u, v = factors
        dense = v @ u.T if u.shape[1] >= base.shape[0] else None
        rec = {"norm_growth": round(norm_growth(base, u, v, dense), 6)}
        if sigma is not None:
            sig = sigma.to(torch.float64)
            scale = output_energy(base, sig)
            cumulative = output_energy(dense, sig) if dense is not None else factored_energy(u, v, sig)
            rec["disturbance_cumulative"] = round((cumulative / scale) ** 0.5, 6)
            if name in own:
                mine = stacked_factors([own[name]])
                energy = 0.0 if mine is None else factored_energy(*mine, sig)
                rec["disturbance"] = round((energy / scale) ** 0.5, 6)
        layers[str(layer)] = rec
    return {**summarise(layers.values()), "layers": layers}


def summarise(layers) -> dict:
    """The largest norm growth and the mean disturbances over layers (keys absent when no layer has them)."""
    layers = list(layers)
    out: dict = {}
    growth = [r["norm_growth"] for r in layers if "norm_growth" in r]
    if growth:
        out["norm_growth"] = max(growth)
    for key in ("disturbance", "disturbance_cumulative"):
        vals = [r[key] for r in layers if key in r]
        if vals:
            out[key] = round(sum(vals) / len(vals), 6)
    return out


def recorded_sigmas(bench: Workbench, commits: list[str]) -> dict[int, torch.Tensor]:
    """Σ_l of the layers the given commits edited, as their edits recorded them (found in the
    repository's caches; a layer whose statistics are gone is left out)."""
    from .statistics import recorded_stats

    repo: Repo = bench.repo
    out: dict[int, torch.Tensor] = {}
    for key, layer in recorded_stats(bench, [repo.commit(c) for c in commits]).values():
        if layer in out:
            continue
        found = repo.caches.find_stats(key)
        if found is not None:
            out[layer] = found[1].float()
    return out
