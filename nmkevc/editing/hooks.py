"""Forward hooks and model-state guards shared by the editing steps.

Decoder layers return a tensor in some transformers versions/families and a tuple in
others; every read or write of a layer's output goes through `hidden_of`/`with_hidden`
so no step depends on which. Hooks are always removed (context managers), so an
exception mid-edit never leaves a model instrumented.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from ..models.tokens import Batch


def hidden_of(output) -> torch.Tensor:
    """The hidden-state tensor of a module output (tensor, tuple or ModelOutput)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return output[0]
    return output[0]  # ModelOutput supports integer indexing


def with_hidden(output, hidden: torch.Tensor):
    """`output` with its hidden-state tensor replaced, same container type."""
    if isinstance(output, torch.Tensor):
        return hidden
    if isinstance(output, tuple):
        return (hidden, *output[1:])
    if isinstance(output, list):
        return [hidden, *output[1:]]
    output[0] = hidden
    return output


@contextmanager
def hooks(pre: dict[nn.Module, Callable] | None = None,
          post: dict[nn.Module, Callable] | None = None,
          pre_kwargs: dict[nn.Module, Callable] | None = None) -> Iterator[None]:
    """Register forward pre-hooks fn(module, args), forward hooks fn(module, args, output)
    and pre-hooks that also see keyword arguments fn(module, args, kwargs)."""
    handles = []
    try:
        for module, fn in (pre or {}).items():
            handles.append(module.register_forward_pre_hook(fn))
        for module, fn in (pre_kwargs or {}).items():
            handles.append(module.register_forward_pre_hook(fn, with_kwargs=True))
        for module, fn in (post or {}).items():
            handles.append(module.register_forward_hook(fn))
        yield
    finally:
        for h in handles:
            h.remove()


def first_input(args) -> torch.Tensor:
    return args[0] if isinstance(args, tuple) else args


@dataclass
class LayerCall:
    """A decoder layer as one forward pass called it, less its hidden state: replaying it on
    another hidden state re-runs that layer alone (the masks, positions and rotary tables the
    model built for the pass come with it, whatever the architecture)."""

    module: nn.Module
    args: tuple
    kwargs: dict

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden_of(self.module(hidden, *self.args, **self.kwargs))


@contextmanager
def recorded_calls(modules: Sequence[nn.Module],
                   inputs: list[torch.Tensor | None] | None = None) -> Iterator[list[LayerCall | None]]:
    """Record how the forward passes inside call each of `modules` (decoder layers; the last
    pass wins); with `inputs` (a list as long as `modules`), keep each one's input hidden state too."""
    calls: list[LayerCall | None] = [None] * len(modules)

    def grab(j: int, module: nn.Module) -> Callable:
        def fn(_m, args, kwargs):
            calls[j] = LayerCall(module, tuple(args[1:]), dict(kwargs))
            if inputs is not None:
                inputs[j] = first_input(args).detach()

        return fn

    with hooks(pre_kwargs={m: grab(j, m) for j, m in enumerate(modules)}):
        yield calls


@contextmanager
def frozen_eval(model: nn.Module) -> Iterator[None]:
    """Eval mode and no weight gradients for the duration; the caller's flags come back after."""
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


@contextmanager
def attention_kernel(model: nn.Module, dtype: torch.dtype | None = None) -> Iterator[None]:
    """Scaled dot-product attention through its plain (math) kernel when it runs in half
    precision (`dtype`, else the model's own) on the CPU, where the fused kernel's backward is
    the largest single cost of a z step (short queries over a cached prefix; profiled on
    SmolLM2, docs/method.md); elsewhere torch's own choice."""
    p = next(model.parameters(), None)
    dtype = dtype or (p.dtype if p is not None else None)
    if p is None or p.device.type != "cpu" or dtype not in (torch.bfloat16, torch.float16):
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):
        yield


class StopForward(Exception):
    """Raised by a hook to end a forward pass early (everything needed has been read)."""


@contextmanager
def stop_after(module: nn.Module) -> Iterator[None]:
    """Abort forward passes right after `module` ran: statistics and keys of early layers
    never pay for the rest of the network. Use with `run_until`."""

    def hook(_m, _a, _o):
        raise StopForward

    with hooks(post={module: hook}):
        yield


def run_until(model: nn.Module, batch: Batch) -> None:
    """A forward pass whose outputs are read by hooks only (may be cut short by `stop_after`)."""
    try:
        model.base_model(**batch.model_inputs(), use_cache=False)
    except StopForward:
        pass


def run_base(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Final (normed) hidden states (B, L, d_model) of the decoder stack, without the
    full-vocabulary logits of every position (the lm head is applied only where needed)."""
    out = model.base_model(**batch.model_inputs(), use_cache=False)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else hidden_of(out)
