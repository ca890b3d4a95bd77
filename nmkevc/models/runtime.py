"""Where and in which dtype models run: a setting read from the repository's config by
every command, so it is kept apart from model loading and loads without torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import NmkevcError

if TYPE_CHECKING:
    import torch

#: the dtypes a model may run in (torch attribute names)
DTYPES = ("float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")


@dataclass(frozen=True)
class Runtime:
    """Where and in which dtype a model runs. The weights run in `dtype` on `device`; the
    editor's statistics, C and solves stay in float32/float64 whatever it is.

    device "auto": every visible GPU (accelerate's device_map spreads a model too large for
    one device over the GPUs and the CPU), else Apple's mps, else the CPU."""

    device: str = "cpu"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise NmkevcError(f"unknown dtype {self.dtype!r} (choose one of {', '.join(DTYPES)})")
        d = self.device
        if not (d in ("auto", "cpu", "cuda", "mps") or (d.startswith("cuda:") and d[5:].isdigit())):
            raise NmkevcError(f"unknown device {d!r} (choose one of {', '.join(DEVICES)})")

    @property
    def torch_dtype(self) -> torch.dtype:
        import torch

        return getattr(torch, self.dtype)

    def placement(self) -> dict:
        """from_pretrained's placement arguments for this device, checked to exist."""
        import torch

        d = self.device
        if d == "auto":
            if torch.cuda.is_available():
                return {"device_map": "auto"}
            mps = getattr(torch.backends, "mps", None)
            return {"device_map": "mps"} if mps is not None and mps.is_available() else {}
        if d.startswith("cuda") and not torch.cuda.is_available():
            raise NmkevcError(f"device {d} was asked for but torch sees no CUDA device")
        if d.startswith("cuda:") and int(d[5:]) >= torch.cuda.device_count():
            raise NmkevcError(f"device {d} does not exist (torch sees {torch.cuda.device_count()} CUDA devices)")
        if d == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise NmkevcError("device mps was asked for but torch sees no Apple GPU")
        return {} if d == "cpu" else {"device_map": d}
