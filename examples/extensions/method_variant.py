"""An editing method in one file: `nmke-sparse`, NMKE that writes only the strongest part of
its neuron mask, for a user who wants smaller, more local deltas.

After NMKE's masked solve, each layer keeps the `keep_share` of the masked neurons whose rows
of U carry the most mass and zeroes the rest (the delta's mass then sits on fewer neurons).
The record is NMKE's plus that one field; a commit stores it under the method's name, so it
reads back, replays and merges like any shipped method. Importing this module registers it;
`tests/test_extension_points.py` edits with it. docs/design.md, "How to add ...".
"""

from __future__ import annotations

from dataclasses import dataclass

from nmkevc.editing.methods.nmke import NmkeHparams
from nmkevc.editing.methods.nmke import solve as nmke_solve
from nmkevc.editing.registry import EditMethod, FactorInputs, register_method


@dataclass
class SparseNmkeHparams(NmkeHparams):
    method: str = "nmke-sparse"
    #: share of the masked neurons (by the mass of their rows of U) that the update keeps
    keep_share: float = 0.5

    def _check(self, bad) -> None:
        super()._check(bad)
        if isinstance(self.keep_share, bool) or not (isinstance(self.keep_share, float | int)
                                                     and 0 < self.keep_share <= 1):
            bad(f"keep_share must lie in (0, 1], got {self.keep_share!r}")


def solve(inputs: FactorInputs, hp: SparseNmkeHparams):
    import torch

    from nmkevc.editing.update import Factor

    factor = nmke_solve(inputs, hp)
    mass = factor.U.double().pow(2).sum(dim=1)
    live = torch.nonzero(mass > 0).flatten()
    keep = max(1, round(hp.keep_share * live.numel()))
    drop = live[mass[live].argsort(descending=True)[keep:]]
    u = factor.U.clone()
    u[drop] = 0
    return Factor(u, {**factor.info, "kept_share": keep / max(1, live.numel())})


register_method(EditMethod(
    "nmke-sparse", "NMKE writing only the strongest keep_share of its neuron mask",
    masks_neurons=True, uses_projector=True, uses_second_moment=False, solve=solve, hparams=SparseNmkeHparams,
))
