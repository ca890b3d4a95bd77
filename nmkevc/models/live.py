"""A loaded model kept in step with an effective set, rebuilding only what changed,
and the handles through which everyone else reads it.

Consecutive edits touch a handful of weights; moving the live model from one
effective set to the next recomputes exactly those tensors from the base file and the
deltas, so the in-memory model is always bit-identical to a fresh checkout.

The live model is shared (one per repository object), so nobody holds it directly: a
`ModelState` names the state it was handed out at and refuses use once the shared model
has moved to another state, instead of silently answering for a different revision.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..deltas.compose import apply_to_weight
from ..deltas.delta import WeightDelta
from ..errors import BaseMismatchError, NmkevcError, StaleModelError
from .adapters import ArchAdapter
from .loading import Runtime, load_model, load_tokenizer
from .weights import BaseWeights


@dataclass
class LiveModel:
    model_dir: Path
    model: torch.nn.Module
    tokenizer: object
    adapter: ArchAdapter
    weights: BaseWeights
    #: weight name → the delta ids currently applied to it, in order
    applied: dict[str, tuple[str, ...]] = field(default_factory=dict)
    state_key: str | None = None
    #: a frozen model stays at the state it was loaded at (the base, read apart from the live one)
    frozen: bool = False

    @classmethod
    def load(cls, model_dir: Path, state_key: str | None = None, frozen: bool = False,
             runtime: Runtime | None = None, tokenizer=None) -> LiveModel:
        """`tokenizer`: the base's, when the caller already loaded it (it takes ~2 s to load)."""
        model, adapter = load_model(model_dir, runtime)
        tokenizer = load_tokenizer(model_dir) if tokenizer is None else tokenizer
        return cls(model_dir, model, tokenizer, adapter, BaseWeights(model_dir, adapter), state_key=state_key,
                   frozen=frozen)

    def parameter(self, name: str) -> torch.nn.Parameter:
        try:
            return self.model.get_parameter(name)
        except AttributeError:
            raise BaseMismatchError(f"the model has no parameter {name!r} named by a delta") from None

    def sync(self, plan: dict[str, Sequence[tuple[str, WeightDelta]]], state_key: str,
             ready: dict[str, torch.Tensor] | None = None) -> int:
        """Make the model equal base + plan. `plan` maps weight name → [(delta id, delta)];
        `ready` holds weights of this very state already materialised (workbench.materialise).

        Returns the number of tensors rewritten."""
        if self.frozen and state_key != self.state_key:
            raise NmkevcError("internal error: a frozen model cannot be moved to another state")
        changed = 0
        names = set(plan) | set(self.applied)
        for name in sorted(names):
            entries = plan.get(name, ())
            ids = tuple(d_id for d_id, _ in entries)
            if self.applied.get(name, ()) == ids:
                continue
            if ready is not None and name in ready and entries:
                new = ready[name]
            else:
                new = apply_to_weight(self.weights.get(name), [w for _, w in entries])
            param = self.parameter(name)
            with torch.no_grad():
                param.copy_(new.to(param.dtype))
            if ids:
                self.applied[name] = ids
            else:
                self.applied.pop(name, None)
            changed += 1
        self.state_key = state_key
        return changed


@dataclass(frozen=True)
class ModelState:
    """The model at one state (a base plus the deltas in effect), as handed out.

    Valid while the underlying model stays at `state_key`; once the repository moves its
    shared model to another revision, `model` raises StaleModelError (ask the repository
    for the revision again: moving back rewrites only the changed weights)."""

    live: LiveModel
    state_key: str
    label: str = "this revision"

    @property
    def current(self) -> bool:
        return self.live.state_key == self.state_key

    @property
    def model(self) -> torch.nn.Module:
        if not self.current:
            raise StaleModelError(
                f"the model handed out for {self.label} has since been moved to another revision; "
                "load it again from the repository"
            )
        return self.live.model

    @property
    def tokenizer(self):
        return self.live.tokenizer

    @property
    def adapter(self) -> ArchAdapter:
        return self.live.adapter

    @property
    def weights(self) -> BaseWeights:
        """The base's tensors as stored (read-only; they never move)."""
        return self.live.weights

    @property
    def model_dir(self) -> Path:
        """Where the base's files are."""
        return self.live.model_dir
