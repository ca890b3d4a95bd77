"""Deltas layer: the factored neuron delta (apply, compose, measure). Never dense on disk.

`Delta` and `WeightDelta` hold torch tensors and are imported on first use, so what reads
stored factors without torch (`stored`, `compose`) does not load it."""

from ..lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {"Delta": ".delta", "WeightDelta": ".delta"})
__all__ = ["Delta", "WeightDelta"]
