"""Deltas layer: the factored neuron delta (apply, compose, measure). Never dense on disk."""

from .delta import Delta, WeightDelta

__all__ = ["Delta", "WeightDelta"]
