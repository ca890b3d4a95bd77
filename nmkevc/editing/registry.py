"""The registry of editing methods: one object per method, the only place names are known.

Everything that differs between NMKE, AlphaEdit and MEMIT is a property of the method
object (its hyperparameter record, which statistics it reads, whether it masks neurons,
how it solves for the neuron-space factor U). The engine, the porcelain and the CLI's
choices all ask this registry. Each shipped method is one file of editing/methods/ that
registers itself; a new method or a variant is one more file calling `register_method`
(examples/extensions/method_variant.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from importlib import import_module
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
    guard_cov: torch.Tensor | None = None  # μ_g K_g K_gᵀ of the relation guard (editing/guard.py); None = off

    def kept_cov(self, prior_weight: float = 1.0) -> torch.Tensor | None:
        """What the solve keeps besides the edit's own keys: `prior_weight` · C and the relation
        guard's term (None: nothing). With the guard off this is C itself, bit for bit."""
        prior = self.prior_cov if prior_weight else None
        if prior is not None and prior_weight != 1.0:
            prior = prior_weight * prior.double()
        if self.guard_cov is None:
            return prior
        return self.guard_cov if prior is None else prior.double() + self.guard_cov


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
    #: the method's hyperparameter record (an `EditHparams` subclass); commits store its fields
    #: under the method's name, which is how a stored record is read back
    hparams: type = field(default=None, compare=False)  # type: ignore[assignment]

    def factor(self, inputs: FactorInputs, hparams) -> Factor:
        return self.solve(inputs, hparams)

    def needs_second_moment(self, hparams) -> bool:
        """Whether a solve with these hyperparameters reads Σ_l (MEMIT, or a masked form that does)."""
        return self.uses_second_moment or hparams.reads_second_moment()


_METHODS: dict[str, EditMethod] = {}
#: the methods by name, read-only; a new one is added once, at import, by `register_method`
REGISTRY: Mapping[str, EditMethod] = MappingProxyType(_METHODS)


def register_method(method: EditMethod) -> EditMethod:
    """Add a method (e.g. a variant of a shipped one, in a file of its own). Its name is what
    commits record, so it must not replace a method that already exists; its record must be an
    `EditHparams` subclass whose `method` default is that name."""
    if method.name in _METHODS and _METHODS[method.name] is not method:
        raise EditRequestError(f"a method named {method.name!r} is already registered")
    record = method.hparams
    if not (isinstance(record, type) and is_dataclass(record) and hasattr(record, "from_json")):
        raise EditRequestError(f"method {method.name!r} needs a hyperparameter record (an EditHparams subclass)")
    if {f.name: f.default for f in fields(record)}.get("method") != method.name:
        raise EditRequestError(f"the record of method {method.name!r} must default `method` to its name")
    _METHODS[method.name] = method
    return method


def hparams_records() -> dict[str, type]:
    """{method name: its hyperparameter record} of every registered method."""
    _load_builtin()
    return {name: m.hparams for name, m in _METHODS.items()}


def method_names() -> tuple[str, ...]:
    _load_builtin()
    return tuple(REGISTRY)


def get_method(name: str) -> EditMethod:
    _load_builtin()
    try:
        return REGISTRY[name]
    except KeyError:
        raise EditRequestError(
            f"unknown method {name!r} (choose one of {', '.join(method_names())})"
        ) from None




#: the shipped methods, one module each, registered when the registry is first read (by name, so
#: this module stays below them: they import it, and the records they hold)
BUILTIN = ("nmkevc.editing.methods.nmke", "nmkevc.editing.methods.alphaedit", "nmkevc.editing.methods.memit")


def _load_builtin() -> None:
    for module in BUILTIN:
        import_module(module)
