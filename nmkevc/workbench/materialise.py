"""A state's edited weights: base + Σ its deltas, computed once and kept for long histories.

The sums are the deltas layer's (`deltas.compose`, float64 in canonical order); where they
are kept is the repository's (`repo.materialised`). An export computes a state, or reads a
cached one back, without loading torch at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..errors import NmkevcError
from ..repo.materialised import MIN_DELTAS, MaterialisedCache
from ..repo.repository import Repo
from ..tensorio import TensorSpec, tensor_buffer

if TYPE_CHECKING:
    import torch

    from ..models.weights import BaseWeights


def materialise(repo: Repo, base_id: str, commits: list[str], weights: BaseWeights,
                extra: Sequence[str] = ()) -> dict[str, torch.Tensor]:
    """{weight name: base + Σ its deltas, in the base dtype} for every weight the state
    edits; a long history's result is kept in the materialised cache and read back from
    there (checked against the base's specs)."""
    key = repo.state_key(base_id, commits, extra)
    cached = _cached_state(repo, key, weights)
    if cached is not None:
        return MaterialisedCache.tensors(cached)
    return _compute_state(repo, key, commits, weights, extra)


def materialised_buffers(repo: Repo, base_id: str, commits: list[str], weights: BaseWeights) -> dict[str, object]:
    """{weight name: its bytes} of `materialise`, computed or read back without loading torch
    (for a base numpy casts exactly, `NUMPY_EXACT_CASTS`): an export starts at once."""
    from ..deltas.compose import NUMPY_EXACT_CASTS, apply_array, apply_to_weight

    key = repo.state_key(base_id, commits)
    cached = _cached_state(repo, key, weights)
    if cached is not None:
        return {name: buf for name, (_, buf) in cached.items()}
    out = {}
    for name, factors in sorted(repo.factor_plan(commits).items()):
        if weights.spec(name).dtype in NUMPY_EXACT_CASTS:
            out[name] = apply_array(weights.array(name), factors)
        else:
            out[name] = apply_to_weight(weights.get(name), factors)
    if is_long(repo, commits):
        repo.materialised.put(key, out)
    return {name: tensor_buffer(t) for name, t in out.items()}


def is_long(repo: Repo, commits: list[str], extra: Sequence[str] = ()) -> bool:
    """Whether a state has enough deltas for its weights to be worth keeping."""
    return len(repo.delta_ids(commits, extra)) >= MIN_DELTAS


def _cached_state(repo: Repo, key: str, weights: BaseWeights) -> dict | None:
    """The cache's {name: (spec, bytes)} for `key`, if every tensor fits this base's weight."""
    raw = repo.materialised.get_raw(key)
    if raw is None or not all(_fits(weights, name, spec) for name, (spec, _) in raw.items()):
        return None
    return raw


def _compute_state(repo: Repo, key: str, commits: list[str], weights: BaseWeights,
                   extra: Sequence[str] = ()) -> dict[str, torch.Tensor]:
    """Reads the deltas whole and keeps them in the repository's cache, where a model's sync
    and an edit's key statistics read them next."""
    from ..deltas.compose import apply_to_weight

    plan = repo.plan_of(commits, extra)
    out = {name: apply_to_weight(weights.get(name), [w for _, w in entries])
           for name, entries in sorted(plan.items())}
    if is_long(repo, commits, extra):
        repo.materialised.put(key, out)
    return out


def _fits(weights: BaseWeights, name: str, spec: TensorSpec) -> bool:
    """A cached tensor stands for a weight of this base only with its name, dtype and shape."""
    try:
        want = weights.spec(name)
    except (NmkevcError, KeyError):
        return False
    return want.dtype == spec.dtype and tuple(want.shape) == tuple(spec.shape)
