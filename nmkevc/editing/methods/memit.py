"""MEMIT: U = (λ0 Σ + λ_F I + μ C + K Kᵀ)⁻¹ K per layer, with no null space. By default it is
ENCORE (μ = 1: the earlier edits' keys C kept; λ_F = 10, ENCORE's Frobenius-norm term; MPES in
Step 1), the best MEMIT on the dev split and at T = 1000 on the test split; `preset=published` is
MEMIT as published (μ = 0, λ_F = 0, no MPES)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...errors import EditRequestError
from ..hparams import EditHparams, non_negative, positive
from ..registry import EditMethod, FactorInputs, register_method

if TYPE_CHECKING:
    from ..update import Factor

#: MEMIT's λ0 calibrated for SmolLM2-135M on 20 dev facts of countryinfo (docs/figures/ridge.json):
#: the largest of 15000 (published), 3000, 1000, 300 reaching the best efficacy (0.95; 15000 gives
#: 0.65, 3000 0.90); specificity 0.69 (0.68–0.72 across the four). Other models need their own λ0.
MEMIT_LAMBDA0_DEFAULT = 1000.0


@dataclass
class MemitHparams(EditHparams):
    method: str = "memit"
    #: MEMIT: U = (λ0 Σ + KKᵀ)⁻¹ K. The published 15000 was set for GPT-J/Llama; SmolLM2-135M's Σ is
    #: small (trace 16–40), so λ0 is calibrated for it on the dev split (MEMIT_LAMBDA0_DEFAULT above).
    memit_lambda0: float = MEMIT_LAMBDA0_DEFAULT
    #: ENCORE's Frobenius-norm term on MEMIT's update, λ_F ‖ΔW‖²_F: U = (λ0 Σ + λ_F I + KKᵀ)⁻¹ K
    #: (absolute, as ENCORE's; 0 = off). The null-space methods already carry this term: their
    #: λ I in A = P(KKᵀ + C) + λI is it (docs/method.md, "Lifelong mechanisms"). 10 by default:
    #: on the dev split it nearly halved the perplexity drift of μ = 1 alone for 0.01 of efficacy (λ_F = 3
    #: lost fluency), and at T = 1000 on the test split it beat μ = 1 alone (docs/results.md)
    memit_frobenius: float = 10.0
    #: μ, the weight of the earlier edits' keys C = Σ K Kᵀ (of the effective set) in MEMIT's solve:
    #: U = (λ0 Σ + λ_F I + μ C + KKᵀ)⁻¹ K keeps the outputs MEMIT wrote at those keys, as ENCORE's
    #: MEMIT does (μ = 1; AlphaEdit's C term, without the projection). 0 = off, as published. On by
    #: default (with MPES, every method's default): ENCORE's form beat published MEMIT and MEMIT with
    #: MPES alone on every figure on the dev split (docs/results/lifelong-countryinfo-dev-T300-B100)
    memit_prior: float = 1.0

    def _check(self, bad) -> None:
        super()._check(bad)
        positive(bad, self, "memit_lambda0")
        non_negative(bad, self, "memit_frobenius", "memit_prior")


def solve(inputs: FactorInputs, hp: MemitHparams) -> Factor:
    from ..update import Factor, memit_factor, zero_outside

    if inputs.second_moment is None:
        raise EditRequestError("MEMIT needs the key second moment of every edited layer")
    prior = inputs.prior_cov if hp.memit_prior else None
    u = memit_factor(inputs.keys, inputs.second_moment, hp.memit_lambda0, hp.memit_frobenius,
                     inputs.kept_cov(hp.memit_prior))
    info = {"lambda0": float(hp.memit_lambda0)}
    if hp.memit_frobenius:
        info["frobenius"] = float(hp.memit_frobenius)
    if hp.memit_prior:
        info["prior"] = float(hp.memit_prior) if prior is not None else 0.0  # 0: no earlier edit to keep
    return Factor(zero_outside(u, inputs.mask), info)


MEMIT = register_method(EditMethod(
    "memit", "MEMIT: (λ0 Σ + K Kᵀ)⁻¹ K, no null space",
    masks_neurons=False, uses_projector=False, uses_second_moment=True, solve=solve, hparams=MemitHparams,
))
