"""The registry of editing methods: one object per method, the only place names are known.

Everything that differs between NMKE, AlphaEdit and MEMIT is a property of the method
object (which statistics it reads, whether it masks neurons, how it solves for the
neuron-space factor U). The engine, the porcelain and the CLI's choices all ask the
registry, so adding a method touches this file alone. The forms a neuron mask can take in
the solve (`EditHparams.masked_update`) are a second, smaller registry here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

from ..errors import EditRequestError

if TYPE_CHECKING:  # the registry is read by the CLI before torch is needed
    import torch

    from .update import Factor


@dataclass(frozen=True)
class FactorInputs:
    """What a method may read to solve for U at one layer (missing = not available)."""

    keys: torch.Tensor  # (d_ff, n)
    projector: torch.Tensor | None  # P_l; None = identity
    prior_cov: torch.Tensor | None  # C_l = Σ K Kᵀ of earlier edits; None = zeros
    second_moment: torch.Tensor | None  # Σ_l (MEMIT; the projected masked update)
    mask: torch.Tensor | None = None  # bool (d_ff,): the neurons the update may touch; None = all


@dataclass(frozen=True)
class EditMethod:
    name: str
    summary: str
    #: run neuron attribution and restrict each layer's update to the entropy-guided mask
    masks_neurons: bool
    #: needs the null-space projector P_l of the preserved keys (and protects C_l)
    uses_projector: bool
    #: needs the raw key second moment Σ_l
    uses_second_moment: bool
    solve: Callable[[FactorInputs, object], Factor]  # (inputs, hparams) → U (d_ff × n) and info

    def factor(self, inputs: FactorInputs, hparams) -> Factor:
        return self.solve(inputs, hparams)

    def needs_second_moment(self, hparams) -> bool:
        """Whether a solve with these hyperparameters reads Σ_l (MEMIT, or a masked form that does)."""
        return self.uses_second_moment or (self.masks_neurons
                                           and masked_update_form(hparams.masked_update).uses_second_moment)


@dataclass(frozen=True)
class MaskedUpdate:
    """How a neuron mask enters the null-space solve."""

    name: str
    summary: str
    #: (inputs with a mask, hparams) → U (d_ff × n, float64, zero outside the mask) and info
    solve: Callable[[FactorInputs, object], Factor]
    #: reads Σ_l (for a projector of its own)
    uses_second_moment: bool = False


def _ridge(keys, projector, hp) -> float:
    from .update import relative_ridge

    return relative_ridge(keys, projector, hp.ridge) if hp.ridge_relative else float(hp.ridge)


def _published(inputs: FactorInputs, hp) -> Factor:
    from .update import Factor, nullspace_factor, zero_outside

    lam = _ridge(inputs.keys, inputs.projector, hp)
    u = nullspace_factor(inputs.keys, inputs.projector, inputs.prior_cov, lam)
    return Factor(zero_outside(u, inputs.mask), {"ridge": lam})


def _compensated(inputs: FactorInputs, hp) -> Factor:
    from .update import Factor, masked_nullspace_factor

    lam = _ridge(inputs.keys, inputs.projector, hp)
    return Factor(masked_nullspace_factor(inputs.keys, inputs.projector, inputs.prior_cov, lam, inputs.mask),
                  {"ridge": lam})


def _projected(inputs: FactorInputs, hp) -> Factor:
    from .update import Factor, masked_projected_factor

    if inputs.second_moment is None:
        raise EditRequestError("the projected masked update needs the key second moment of every edited layer")
    u, lam, kept = masked_projected_factor(inputs.keys, inputs.second_moment, inputs.prior_cov, inputs.mask,
                                           lambda k, p: _ridge(k, p, hp), hp.nullspace)
    return Factor(u, {"ridge": lam, "mask_nullspace_kept": kept})


#: read-only, like REGISTRY
MASKED_UPDATES: Mapping[str, MaskedUpdate] = MappingProxyType({f.name: f for f in (
    MaskedUpdate("published", "solve for all neurons, then zero the rows outside the mask (NMKE)",
                 _published),
    MaskedUpdate("compensated", "solve the same system on the mask's rows only (beyond the paper)",
                 _compensated),
    MaskedUpdate("projected", "solve on the mask's rows with the null space of the preserved keys "
                 "restricted to them (beyond the paper)", _projected, uses_second_moment=True),
)})


def masked_update_form(name: str) -> MaskedUpdate:
    try:
        return MASKED_UPDATES[name]
    except KeyError:
        raise EditRequestError(
            f"unknown masked_update {name!r} (choose one of {', '.join(MASKED_UPDATES)})"
        ) from None


def _nullspace(inputs: FactorInputs, hp) -> Factor:
    from .update import Factor, nullspace_factor

    if inputs.mask is not None:
        return masked_update_form(hp.masked_update).solve(inputs, hp)
    lam = _ridge(inputs.keys, inputs.projector, hp)
    return Factor(nullspace_factor(inputs.keys, inputs.projector, inputs.prior_cov, lam), {"ridge": lam})


def _memit(inputs: FactorInputs, hp) -> Factor:
    from .update import Factor, memit_factor, zero_outside

    if inputs.second_moment is None:
        raise EditRequestError("MEMIT needs the key second moment of every edited layer")
    u = memit_factor(inputs.keys, inputs.second_moment, hp.memit_lambda0)
    return Factor(zero_outside(u, inputs.mask), {"lambda0": float(hp.memit_lambda0)})


#: read-only: a method is added by adding an entry here, not by mutating state at run time
REGISTRY: Mapping[str, EditMethod] = MappingProxyType({m.name: m for m in (
    EditMethod("nmke", "AlphaEdit's null-space update restricted to an entropy-guided neuron mask",
               masks_neurons=True, uses_projector=True, uses_second_moment=False, solve=_nullspace),
    EditMethod("alphaedit", "null-space constrained locate-then-edit (all neurons)",
               masks_neurons=False, uses_projector=True, uses_second_moment=False, solve=_nullspace),
    EditMethod("memit", "MEMIT: (λ0 Σ + K Kᵀ)⁻¹ K, no null space",
               masks_neurons=False, uses_projector=False, uses_second_moment=True, solve=_memit),
)})


def method_names() -> tuple[str, ...]:
    return tuple(REGISTRY)


def get_method(name: str) -> EditMethod:
    try:
        return REGISTRY[name]
    except KeyError:
        raise EditRequestError(
            f"unknown method {name!r} (choose one of {', '.join(method_names())})"
        ) from None
