"""The factored neuron delta.

For one weight `W_l` (viewed d_model × d_ff), an edit changes only the neuron columns
`idx`: ΔW[:, idx] = V @ U.T with U (k × r) and V (d_model × r). The edit's keys K
(d_ff × n) ride along so that C_l = Σ K Kᵀ can be rebuilt for any effective set.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch

from .. import tensorio
from ..errors import CorruptObjectError
from .stored import FORMAT, Factors, weight_records


@dataclass(frozen=True)
class WeightDelta(Factors):
    """One weight's change: its factors as tensors (idx, U, V), the edit's keys and its record."""

    K: torch.Tensor | None = None  # (d_ff, n) float32
    info: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        """Shape of the stored weight this delta applies to."""
        if self.orientation == "out_in":
            return (self.d_model, self.d_ff)
        return (self.d_ff, self.d_model)

    def dense_out_in(self) -> torch.Tensor:
        """ΔW as a dense (d_model × d_ff) float32 matrix (for measuring, never stored)."""
        out = torch.zeros(self.d_model, self.d_ff, dtype=torch.float32)
        out[:, self.idx] = self.V.float() @ self.U.float().T
        return out

    def dense(self) -> torch.Tensor:
        """ΔW in the stored weight's orientation."""
        d = self.dense_out_in()
        return d if self.orientation == "out_in" else d.T.contiguous()

    def neuron_mass(self) -> torch.Tensor:
        """Squared norm of each neuron's column of ΔW, (d_ff,) float64."""
        mass = torch.zeros(self.d_ff, dtype=torch.float64)
        if self.idx.numel():
            gram = self.V.double().T @ self.V.double()  # r × r
            u = self.U.double()
            mass[self.idx] = ((u @ gram) * u).sum(dim=1).clamp_min(0)
        return mass

    def frobenius(self) -> float:
        return float(self.neuron_mass().sum().sqrt())


@dataclass(frozen=True)
class Delta:
    """All weights one commit changes, plus free-form metadata (mask ratios, etc.)."""

    weights: tuple[WeightDelta, ...]
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = [w.name for w in self.weights]
        if len(set(names)) != len(names):
            raise CorruptObjectError("a delta lists the same weight twice")
        object.__setattr__(self, "weights", tuple(sorted(self.weights, key=lambda w: w.name)))

    def by_name(self) -> dict[str, WeightDelta]:
        return {w.name: w for w in self.weights}

    def to_bytes(self) -> bytes:
        tensors: dict[str, torch.Tensor] = {}
        meta_w = {}
        for w in self.weights:
            tensors[f"{w.name}/idx"] = w.idx.to(torch.int64)
            tensors[f"{w.name}/U"] = w.U.to(torch.float32)
            tensors[f"{w.name}/V"] = w.V.to(torch.float32)
            if w.K is not None:
                tensors[f"{w.name}/K"] = w.K.to(torch.float32)
            meta_w[w.name] = {
                "layer": w.layer,
                "orientation": w.orientation,
                "d_model": w.d_model,
                "d_ff": w.d_ff,
                "info": w.info,
            }
        meta = {"format": FORMAT, "weights": meta_w, "info": self.info}
        return tensorio.dumps(
            tensors, {"nmkevc": json.dumps(meta, sort_keys=True, separators=(",", ":"))}
        )

    @classmethod
    def from_bytes(cls, data: bytes, oid: str = "?") -> Delta:
        """The delta stored as `data` (what only sums factors reads them without torch:
        `stored.read_factors`)."""
        try:
            tensors, metadata = tensorio.loads(data)
            records, info = weight_records(metadata)
            weights = [WeightDelta(r.name, r.layer, r.orientation, r.d_model, r.d_ff, tensors[f"{r.name}/idx"],
                                   tensors[f"{r.name}/U"], tensors[f"{r.name}/V"], tensors.get(f"{r.name}/K"),
                                   r.info) for r in records]
            return cls(weights=tuple(weights), info=info)
        except CorruptObjectError:
            raise
        except Exception:  # any malformed payload is corruption, never a crash
            raise CorruptObjectError(f"delta {oid[:12]} is not a valid delta payload") from None

    def dense_nbytes(self) -> int:
        """What the same change would take stored as dense float32 weight diffs."""
        return sum(w.d_model * w.d_ff * 4 for w in self.weights)
