"""Loading a base directory into a torch model and tokenizer (never remote code)."""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import NmkevcError, UnsupportedModelError
from .adapters import ArchAdapter, adapter_for
from .weights import read_config

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
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
        return DTYPES[self.dtype]

    def placement(self) -> dict:
        """from_pretrained's placement arguments for this device, checked to exist."""
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


@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' progress bars and advisory logs for the duration."""
    from transformers.utils import logging as tlog

    old_level = tlog.get_verbosity()
    old_env = os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS")
    tlog.set_verbosity_error()
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    had_bars = tlog.is_progress_bar_enabled()
    tlog.disable_progress_bar()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        yield
    finally:
        tlog.set_verbosity(old_level)
        if had_bars:
            tlog.enable_progress_bar()
        if old_env is None:
            os.environ.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
        else:
            os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = old_env


def load_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    with quiet_transformers():
        try:
            tok = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=False)
        except Exception as e:
            raise NmkevcError(f"cannot load the tokenizer from {model_dir}: {e}") from None
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(model_dir: Path, runtime: Runtime | None = None) -> tuple[torch.nn.Module, ArchAdapter]:
    """The base in the runtime's dtype on its device(s) (default float32 on the CPU), eval
    mode, no grads."""
    from transformers import AutoModelForCausalLM

    runtime = runtime or Runtime()
    adapter = adapter_for(read_config(model_dir))  # refuse unsupported models before loading
    placement = runtime.placement()
    with quiet_transformers():
        try:
            model = AutoModelForCausalLM.from_pretrained(
                str(model_dir), dtype=runtime.torch_dtype, trust_remote_code=False, **placement
            )
        except UnsupportedModelError:
            raise
        except Exception as e:
            raise NmkevcError(f"cannot load the model from {model_dir}: {str(e).splitlines()[0]}") from None
    model.eval()
    model.requires_grad_(False)
    return model, adapter
