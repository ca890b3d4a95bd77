"""Which directions of the preserved keys' space count as null: one rule, read by the
projector, its cache key, the diagnosis and the hyperparameters alike (a leaf module, so
that all of them can import it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NullspaceRule:
    """Which eigenvectors of Σ = E[k kᵀ] count as the preserved keys' null space, as one record
    so that the projector, its cache key and the diagnosis all pick the same directions.

    - `threshold`: eigenvalue < threshold (the published rule). Absolute, so what it keeps
      depends on the model's key scale: on SmolLM2-135M it keeps 72-89% of the directions,
      carrying 25-56% of trace Σ (docs/results.md, the lifelong diagnosis).
    - `keep_fraction`: the smallest-eigenvalue `keep_fraction` share of the directions.
    - `energy`: the smallest-eigenvalue directions whose eigenvalues sum to at most
      `energy` · trace Σ: the share of the preserved keys' energy an update may still move.
      Tighter is not safer: on SmolLM2 a small share forces a larger update along the few
      directions left and disturbs generic text more (benchmarks/nullspace.py, docs/method.md).
    """

    threshold: float = 2e-2
    keep_fraction: float | None = None
    energy: float | None = None

    def count(self, evals) -> int:
        """How many of `evals` (Σ's eigenvalues, ascending; a torch tensor) span the null space."""
        if self.energy is not None:
            e = evals.double().clamp(min=0)
            return int((e.cumsum(0) <= self.energy * float(e.sum())).sum())
        if self.keep_fraction is not None:
            return int(round(float(self.keep_fraction) * evals.shape[0]))
        return int((evals < self.threshold).sum())
