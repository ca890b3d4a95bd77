"""Test-only: random factored neuron deltas of realistic shapes for a base, and commits of them."""

from __future__ import annotations

from pathlib import Path

import torch

from nmkevc.deltas.delta import Delta, WeightDelta
from nmkevc.models.adapters import adapter_for


def random_delta(repo, layers=(1, 2), frac: float = 0.5, rank: int = 2, seed: int = 0,
                 scale: float = 0.05, n_keys: int = 1, neurons=None, direction=None) -> Delta:
    """A delta on W_l of `layers` touching `frac` of the neurons (or exactly `neurons`)."""
    base = repo.commit(repo.resolve("HEAD")).base
    manifest = repo.plumbing.manifest(base)
    adapter = adapter_for(manifest.config)
    g = torch.Generator().manual_seed(seed)
    weights = []
    for layer in layers:
        name = adapter.weight_name(layer)
        shape = manifest.tensors[name]["shape"]
        d_model, d_ff = (shape[0], shape[1]) if adapter.orientation == "out_in" else (shape[1], shape[0])
        if neurons is None:
            k = max(1, int(d_ff * frac))
            idx = torch.randperm(d_ff, generator=g)[:k].sort().values
        else:
            idx = torch.tensor(sorted(neurons), dtype=torch.int64)
        U = torch.randn(len(idx), rank, generator=g) * scale
        V = torch.randn(d_model, rank, generator=g) if direction is None else direction.clone()
        K = torch.randn(d_ff, n_keys, generator=g)
        weights.append(WeightDelta(name, layer, adapter.orientation, d_model, d_ff, idx, U, V, K,
                                   {"kept": len(idx)}))
    return Delta(tuple(weights), {"test": True})


def request(subject: str, target: str, prompt: str = "The capital of {} is") -> dict:
    return {"subject": subject, "prompt": prompt, "target_new": target}


def commit_random(where, seed: int, subject: str = "France", target: str | None = None, layers=(1, 2)) -> str:
    """Commit a random delta (`seed`) teaching `subject` -> `target` (default T<seed>) on a
    Repository, or on the repository at a path (opened afresh); its id. Tests reach it as the
    `commit` fixture (conftest.py)."""
    from nmkevc import EditRequest, Repository

    repo = Repository.open(where) if isinstance(where, (str, Path)) else where
    return repo.commit_delta(random_delta(repo, seed=seed, layers=layers), f"teach {subject}",
                             [EditRequest.from_json(request(subject, target or f"T{seed}"))])
