"""A loaded model kept in step with an effective set, rebuilding only what changed.

Consecutive edits touch a handful of weights; moving the live model from one
effective set to the next recomputes exactly those tensors from the base file and the
deltas, so the in-memory model is always bit-identical to a fresh checkout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..deltas.compose import apply_to_weight
from ..deltas.delta import WeightDelta
from .adapters import ArchAdapter
from .loading import load_model, load_tokenizer
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

    @classmethod
    def load(cls, model_dir: Path) -> LiveModel:
        model, adapter = load_model(model_dir)
        return cls(model_dir, model, load_tokenizer(model_dir), adapter, BaseWeights(model_dir))

    def parameter(self, name: str) -> torch.nn.Parameter:
        try:
            return self.model.get_parameter(name)
        except AttributeError:
            from ..errors import BaseMismatchError

            raise BaseMismatchError(f"the model has no parameter {name!r} named by a delta") from None

    def sync(self, plan: dict[str, Sequence[tuple[str, WeightDelta]]], state_key: str) -> int:
        """Make the model equal base + plan. `plan` maps weight name → [(delta id, delta)].

        Returns the number of tensors rewritten."""
        changed = 0
        names = set(plan) | set(self.applied)
        for name in sorted(names):
            entries = plan.get(name, ())
            ids = tuple(d_id for d_id, _ in entries)
            if self.applied.get(name, ()) == ids:
                continue
            base = self.weights.get(name)
            new = apply_to_weight(base, [w for _, w in entries])
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
