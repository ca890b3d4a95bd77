"""The stored delta format, read without torch.

A delta object is canonical safetensors (`Delta.to_bytes`): per edited weight the tensors
`<weight>/idx`, `/U`, `/V` (and the keys `/K`), and a JSON record under the `nmkevc`
metadata key. What only sums factors (the first export of a long history: a thousand
deltas) reads them here as numpy arrays and so never loads torch; `Delta.from_bytes` reads
the same bytes into tensors. Both take the records and the shape check from this module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .. import tensorio
from ..errors import CorruptObjectError

if TYPE_CHECKING:
    import numpy
    import torch

FORMAT = 1
ORIENTATIONS = ("out_in", "in_out")


@dataclass(frozen=True)
class WeightRecord:
    """What the header says of one weight besides its tensors."""

    name: str
    layer: int
    orientation: str
    d_model: int
    d_ff: int
    info: dict


def weight_records(metadata: dict[str, str]) -> tuple[list[WeightRecord], dict]:
    """The weights' records and the delta's own info, from a delta object's metadata."""
    meta = json.loads(metadata["nmkevc"])
    records = [WeightRecord(name, int(m["layer"]), m["orientation"], int(m["d_model"]), int(m["d_ff"]),
                            m.get("info") or {}) for name, m in meta["weights"].items()]
    return records, meta.get("info") or {}


def check_shapes(w) -> None:
    """CorruptObjectError unless a weight's factors fit together: idx sorted and within d_ff,
    U (k × r), V (d_model × r), K (d_ff × n). Works alike on tensors and numpy arrays."""
    k = int(w.idx.shape[0]) if w.idx.ndim == 1 else -1
    keys = getattr(w, "K", None)
    bad = (
        w.orientation not in ORIENTATIONS
        or w.idx.ndim != 1
        or w.U.ndim != 2
        or w.V.ndim != 2
        or w.U.shape[0] != k
        or w.V.shape[0] != w.d_model
        or w.U.shape[1] != w.V.shape[1]
        or (k > 1 and not bool((w.idx[1:] > w.idx[:-1]).all()))
        # increasing, so the ends bound it (two reductions fewer, per weight of every delta read)
        or (k > 0 and (int(w.idx[0]) < 0 or int(w.idx[-1]) >= w.d_ff))
        or (keys is not None and (keys.ndim != 2 or keys.shape[0] != w.d_ff))
    )
    if bad:
        raise CorruptObjectError(f"delta for {w.name} has inconsistent shapes")


@dataclass(frozen=True)
class Factors:
    """One weight's factors, ΔW[:, idx] = V Uᵀ (viewed d_model × d_ff): what summing a state
    needs of a stored delta. `read_factors` gives them as numpy arrays (no keys, no torch);
    a `WeightDelta` is one with tensors, the keys and the record."""

    name: str
    layer: int
    orientation: str
    d_model: int
    d_ff: int
    idx: numpy.ndarray | torch.Tensor  # (k,) int64, sorted, unique
    U: numpy.ndarray | torch.Tensor  # (k, r) float32
    V: numpy.ndarray | torch.Tensor  # (d_model, r) float32

    def __post_init__(self) -> None:
        check_shapes(self)

    @property
    def rank(self) -> int:
        return int(self.U.shape[1])


def read_factors(data: bytes, oid: str = "?") -> tuple[Factors, ...]:
    """Each weight's factors of the delta stored as `data`, in name order (its keys are not read)."""
    try:
        arrays, metadata = tensorio.loads_arrays(data, lambda name: not name.endswith("/K"))
        records, _ = weight_records(metadata)
        return tuple(Factors(r.name, r.layer, r.orientation, r.d_model, r.d_ff, arrays[f"{r.name}/idx"],
                             arrays[f"{r.name}/U"], arrays[f"{r.name}/V"])
                     for r in sorted(records, key=lambda r: r.name))
    except CorruptObjectError:
        raise
    except Exception:  # any malformed payload is corruption, never a crash
        raise CorruptObjectError(f"delta {oid[:12]} is not a valid delta payload") from None
