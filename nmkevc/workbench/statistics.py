"""What an edit needs from the unedited base and from the history: key statistics Σ_l,
their null-space projectors, the context templates, and C_l of the earlier edits.

The base's are found in the repository's caches or computed once from the base model,
which the workbench loads apart from the live one, so preparing an edit never moves the
model of HEAD. Where they are kept and under which keys is the repository's rule
(repo.caches); how they are computed is the editing engine's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING

import torch

from ..corpus import Corpus
from ..repo.caches import ProjectorKey, StatsKey, TemplatesKey
from ..repo.repository import Repo
from .bench import Workbench

if TYPE_CHECKING:
    from ..editing.nullspace import NullspaceRule

DEFAULT_STATS_TOKENS = 20_000


def templates_key(base_id: str, hp) -> TemplatesKey:
    """The cache key of the templates an edit with hyperparameters `hp` uses on this base."""
    return TemplatesKey(base_id, hp.seed, hp.context_n_tokens, tuple(hp.context_prefixes), hp.context_count,
                        hp.prompt_start)


def context_templates(bench: Workbench, key: TemplatesKey) -> list[str]:
    """The base's context templates under a rule: sampled once from the unedited base, then stored."""
    from ..editing import generate_context_templates

    repo = bench.repo
    found = repo.caches.find_templates(key)
    if found is not None:
        return found
    base = bench.base_model(key.base)
    templates = generate_context_templates(base.model, base.tokenizer, seed=key.seed, n_tokens=key.n_tokens,
                                           prefixes=key.prefixes, count=key.count, start=key.start)
    repo.caches.put_templates(key, templates)
    return templates


def nullspace_projectors(repo: Repo, sigmas: dict[int, torch.Tensor], stats_ids: dict[int, str],
                         rule: NullspaceRule) -> tuple[dict[int, torch.Tensor], dict[int, int]]:
    """P_l per layer under a `NullspaceRule`, with the directions each keeps: stored in the
    repository (refs/projectors/) the first time Σ_l is decomposed under the rule, and held
    by the repository object once read."""
    from ..editing.covariance import nullspace_projector

    def load(key: ProjectorKey, sigma: torch.Tensor) -> tuple[torch.Tensor, int]:
        found = repo.caches.find_projector(key)
        if found is not None:
            return found
        projector, n = nullspace_projector(sigma, rule)
        repo.caches.put_projector(key, projector, n)
        return projector, n

    out, kept = {}, {}
    for layer, sigma in sigmas.items():
        key = ProjectorKey(stats_ids[layer], asdict(rule))
        out[layer], kept[layer] = repo.caches.derived(("projector", key.ref), lambda k=key, s=sigma: load(k, s))
    return out, kept


def recorded_templates(repo: Repo, commits) -> dict[str, TemplatesKey]:
    """{context ref: key} for the template rule of every given edit commit (its stored
    hyperparameters): what `fsck --repair` needs to sample a damaged set again."""
    from ..editing import EditHparams
    from ..errors import NmkevcError

    out: dict[str, TemplatesKey] = {}
    for c in commits:
        hp = (c.method or {}).get("hparams")
        if not isinstance(hp, dict):
            continue
        try:
            key = templates_key(c.base, EditHparams.from_json(hp))
        except NmkevcError:
            continue
        out[key.ref] = key
    return out


def second_moments(
    bench: Workbench,
    base_id: str,
    layers: list[int],
    corpus: Corpus,
    tokens: int = DEFAULT_STATS_TOKENS,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[dict[int, torch.Tensor], dict[int, str]]:
    """Σ_l = E[k kᵀ] of the *base* model's keys per layer, from the caches or computed now."""
    from ..editing.covariance import key_second_moment

    repo, adapter = bench.repo, bench.adapter(base_id)
    keys = {layer: StatsKey(base_id, adapter.weight_name(layer), corpus.id, tokens) for layer in layers}
    out: dict[int, torch.Tensor] = {}
    ids: dict[int, str] = {}
    missing = []
    for layer in layers:
        found = repo.caches.find_stats(keys[layer])
        if found is None:
            missing.append(layer)
        else:
            ids[layer], out[layer] = found
    if missing:
        base = bench.base_model(base_id)
        texts = corpus.stats_texts(max_chars=tokens * 8)
        sigmas, count = key_second_moment(
            base.model, base.tokenizer, texts, missing, max_tokens=tokens, progress=progress
        )
        for layer in missing:
            ids[layer] = repo.caches.put_stats(keys[layer], sigmas[layer], count)
            out[layer] = sigmas[layer].float()
    return out, ids


def recorded_stats(bench: Workbench, commits) -> dict[str, tuple[StatsKey, int]]:
    """{stats ref: (key, layer)} for every statistics object the given commits say they
    used (layer, corpus id, token budget): what `fsck --repair` needs to recompute one."""
    from ..errors import NmkevcError

    out: dict[str, tuple[StatsKey, int]] = {}
    for c in commits:
        stats, corpus = c.info.get("stats"), c.info.get("corpus")
        if not isinstance(stats, dict) or not isinstance(corpus, dict):
            continue
        try:
            adapter = bench.adapter(c.base)
            for layer in stats:
                key = StatsKey(c.base, adapter.weight_name(int(layer)), corpus["id"], int(corpus["tokens"]))
                out[key.ref] = (key, int(layer))
        except (NmkevcError, KeyError, TypeError, ValueError):
            continue
    return out


def rebuild_stats(bench: Workbench, how: tuple[StatsKey, int]) -> str | None:
    """Recompute one layer's statistics as recorded; the new object replaces a damaged
    file of the same id. None when the corpus is not the shipped one (its file is not
    recorded), so only the next edit with that corpus can rebuild it."""
    key, layer = how
    corpus = bench.corpus()
    if corpus.id != key.corpus:
        return None
    _, ids = second_moments(bench, key.base, [layer], corpus, key.tokens)
    return ids[layer]


def prior_key_covariance(repo: Repo, commits: list[str], weight_names: list[str],
                         extra: Sequence[str] = ()) -> dict[str, torch.Tensor]:
    """C_l = Σ K Kᵀ over the keys stored with the deltas of an effective set (plus stored,
    uncommitted deltas `extra`), per weight name: what protects earlier edits, so it
    follows branches, merges and reverts."""
    out: dict[str, torch.Tensor] = {}
    plan = repo.plan_of(commits, extra)
    for name in weight_names:
        acc = None
        for _, w in plan.get(name, ()):
            if w.K is None:
                continue
            k = w.K.double()
            acc = k @ k.T if acc is None else acc + k @ k.T
        if acc is not None:
            out[name] = acc.float()
    return out
