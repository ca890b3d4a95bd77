"""Covariance statistics of the base's keys: computed once per (base, layer, corpus,
token budget), stored as content-addressed `stats` objects, and found again by a ref
under refs/stats/ named by the hash of that key."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable

import torch

from .. import tensorio
from ..corpus import Corpus
from ..repo.repository import Repo
from ..storage.objects import canonical_json

STATS_REFS = "refs/stats/"
DEFAULT_STATS_TOKENS = 20_000


def stats_key(base_id: str, weight: str, corpus_id: str, tokens: int) -> dict:
    return {"base": base_id, "weight": weight, "corpus": corpus_id, "tokens": tokens}


def _ref(key: dict) -> str:
    return STATS_REFS + hashlib.sha256(canonical_json(key)).hexdigest()[:40]


def find_stats(repo: Repo, key: dict) -> tuple[str, torch.Tensor] | None:
    oid = repo.refs.read(_ref(key))
    if oid is None:
        return None
    tensors, meta = tensorio.loads(repo.store.get(oid, "stats"))
    return oid, tensors["sigma"]


def put_stats(repo: Repo, key: dict, sigma: torch.Tensor, count: int) -> str:
    meta = {"nmkevc": json.dumps({**key, "count": count}, sort_keys=True)}
    oid = repo.store.put("stats", tensorio.dumps({"sigma": sigma.float().contiguous()}, meta))
    repo.refs.set(_ref(key), oid, "stats")
    return oid


def second_moments(
    repo: Repo,
    base_id: str,
    layers: list[int],
    corpus: Corpus,
    tokens: int = DEFAULT_STATS_TOKENS,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[dict[int, torch.Tensor], dict[int, str]]:
    """Σ_l = E[k kᵀ] of the *base* model's keys per layer, from the store or computed now."""
    from ..editing.covariance import key_second_moment
    from ..models.adapters import adapter_for

    manifest = repo.manifest(base_id)
    adapter = adapter_for(manifest.config)
    out: dict[int, torch.Tensor] = {}
    ids: dict[int, str] = {}
    missing = []
    for layer in layers:
        found = find_stats(repo, stats_key(base_id, adapter.weight_name(layer), corpus.id, tokens))
        if found is None:
            missing.append(layer)
        else:
            ids[layer], out[layer] = found
    if missing:
        live = repo.live_model_of(base_id, [])  # statistics are of the unedited base
        texts = corpus.stats_texts(max_chars=tokens * 8)
        sigmas, count = key_second_moment(
            live.model, live.tokenizer, texts, missing, max_tokens=tokens, progress=progress
        )
        for layer in missing:
            key = stats_key(base_id, adapter.weight_name(layer), corpus.id, tokens)
            ids[layer] = put_stats(repo, key, sigmas[layer], count)
            out[layer] = sigmas[layer].float()
    return out, ids
