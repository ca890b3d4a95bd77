"""Loading a base directory into a torch model and tokenizer (never remote code)."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import torch

from ..errors import NmkevcError, UnsupportedModelError
from .adapters import ArchAdapter, adapter_for
from .runtime import Runtime
from .weights import read_config

__all__ = ["Runtime", "load_model", "load_tokenizer", "quiet_transformers"]


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
