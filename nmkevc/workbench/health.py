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


def state_health(bench: Workbench, base_id: str, commits: list[str], sigmas: Mapping[int, torch.Tensor],
                 extra: Sequence[str] = (), batch: Delta | None = None) -> dict:
    """The health figures of the state `commits` (+ stored deltas `extra`) for the layers that
    `sigmas` covers, and of `batch` (this commit's own delta) where given."""
    import torch

    from ..deltas.compose import summed_out_in

    repo, adapter = bench.repo, bench.adapter(base_id)
    weights = bench.weights(base_id)
    own = {w.name: w for w in (batch.weights if batch is not None else ())}
    layers: dict[str, dict] = {}
    for name, entries in sorted(repo.plan_of(commits, extra).items()):
        layer = entries[0][1].layer
        sigma = sigmas.get(layer)
        base = adapter.to_out_in(weights.get(name)).to(torch.float64)
        total = summed_out_in([w for _, w in entries])  # one product, as materialisation does
        if total is None:
            total = torch.zeros_like(base)
        rec = {"norm_growth": round(float((base + total).norm() / base.norm()) - 1.0, 6)}
        if sigma is not None:
            sig = sigma.to(torch.float64)
            scale = output_energy(base, sig)
            rec["disturbance_cumulative"] = round((output_energy(total, sig) / scale) ** 0.5, 6)
            if name in own:
                rec["disturbance"] = round((output_energy(own[name].dense_out_in(), sig) / scale) ** 0.5, 6)
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
