"""The repository's caches of a base: key statistics, context templates and null-space projectors.

All are derived from the unedited base (and a corpus), never from history: computed
once, stored as content-addressed objects and found again through a ref of their own
namespace (refs/stats/, refs/context/, refs/projectors/). They are gc roots like every ref, and a
rebuildable cache rather than history: deleting them costs recomputation, not data.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from .. import tensorio
from ..errors import NmkevcError
from ..storage.objects import BLOB_KIND, STATS_KIND, canonical_json
from ..storage.refs import RefStore
from ..storage.store import ObjectStore
from .namespaces import CONTEXT, PROJECTORS, STATS

if TYPE_CHECKING:
    import torch

#: Object kinds the caches store.
TEMPLATES_KIND = BLOB_KIND


@dataclass(frozen=True)
class StatsKey:
    """What a stored Σ_l depends on: the base, the weight, the corpus and the token budget."""

    base: str
    weight: str
    corpus: str
    tokens: int

    def to_json(self) -> dict:
        return asdict(self)

    @property
    def ref(self) -> str:
        return STATS + hashlib.sha256(canonical_json(self.to_json())).hexdigest()[:40]


@dataclass(frozen=True)
class TemplatesKey:
    """What a base's context templates depend on besides the base: the generation rule (the
    edit hyperparameters seed, context_n_tokens, context_prefixes, context_count, prompt_start).

    The rule every edit before it existed used (seed 0, 10 sampled tokens after each of the
    five default prefixes, the tokenizer's own start) keeps the ref it always had,
    refs/context/<base>, so those templates stay found; any other rule gets a ref of its own,
    refs/context/<base>-<digest of the rule>, so templates made by one rule are never used
    for another."""

    base: str
    seed: int = 0
    n_tokens: int = 10
    prefixes: tuple[str, ...] = ("The", "Therefore", "Because", "I", "You")
    count: str = "sampled"
    start: str = "tokenizer"

    def rule(self) -> dict:
        d = asdict(self)
        del d["base"]
        d["prefixes"] = list(self.prefixes)
        return d

    @property
    def ref(self) -> str:
        if self.rule() == TemplatesKey(self.base).rule():
            return CONTEXT + self.base
        return CONTEXT + self.base + "-" + hashlib.sha256(canonical_json(self.rule())).hexdigest()[:16]


@dataclass(frozen=True)
class ProjectorKey:
    """What a stored null-space projector depends on: the Σ_l object it decomposes and the
    rule that picks the null directions (a `NullspaceRule` as JSON)."""

    stats: str
    rule: dict

    def to_json(self) -> dict:
        return {"stats": self.stats, "rule": self.rule}

    @property
    def ref(self) -> str:
        return PROJECTORS + hashlib.sha256(canonical_json(self.to_json())).hexdigest()[:40]


class BaseCaches:
    """Find / put by key; what to compute on a miss is the caller's business (editing)."""

    def __init__(self, store: ObjectStore, refs: RefStore):
        self._store = store
        self._refs = refs
        self._derived: dict[tuple, object] = {}

    # -- values derived from stored objects, kept for this repository object's lifetime --------
    def derived(self, key: tuple, compute: Callable[[], object]) -> object:
        """compute() once per key (which must name every input, e.g. a stats object id and
        the null-space rule): the null-space projectors of a lifelong run are decomposed once."""
        if key not in self._derived:
            self._derived[key] = compute()
        return self._derived[key]

    # -- key statistics Σ_l ----------------------------------------------------------------
    def find_stats(self, key: StatsKey) -> tuple[str, torch.Tensor] | None:
        """(object id, Σ) stored under key, or None when absent *or damaged*: a cache is
        recomputed (and the store replaces the bad file) rather than block every edit."""
        try:
            oid = self._refs.read(key.ref)
            if oid is None:
                return None
            tensors, _meta = tensorio.loads(self._store.get(oid, STATS_KIND))
            return oid, tensors["sigma"]
        except (NmkevcError, KeyError, ValueError):
            return None

    def put_stats(self, key: StatsKey, sigma: torch.Tensor, count: int) -> str:
        meta = {"nmkevc": json.dumps({**key.to_json(), "count": count}, sort_keys=True)}
        oid = self._store.put(STATS_KIND, tensorio.dumps({"sigma": sigma.float().contiguous()}, meta))
        self._refs.set(key.ref, oid, "stats")
        return oid

    # -- null-space projectors P_l ------------------------------------------------------------
    def find_projector(self, key: ProjectorKey) -> tuple[torch.Tensor, int] | None:
        """(P, directions kept) stored under key, or None when absent or damaged (decomposed again).

        Stored because Σ_l's eigendecomposition (d_ff × d_ff, per layer) was most of what a
        one-fact edit spent outside the engine, in every new process."""
        try:
            oid = self._refs.read(key.ref)
            if oid is None:
                return None
            tensors, meta = tensorio.loads(self._store.get(oid, STATS_KIND))
            info = json.loads(meta["nmkevc"])
            if info.get("stats") != key.stats or info.get("rule") != key.rule:
                return None
            return tensors["projector"], int(info["kept"])
        except (NmkevcError, KeyError, ValueError, TypeError):
            return None

    def put_projector(self, key: ProjectorKey, projector: torch.Tensor, kept: int) -> str:
        meta = {"nmkevc": json.dumps({**key.to_json(), "kept": kept}, sort_keys=True)}
        oid = self._store.put(STATS_KIND, tensorio.dumps({"projector": projector.contiguous()}, meta))
        self._refs.set(key.ref, oid, "null-space projector")
        return oid

    # -- context templates -------------------------------------------------------------------
    def find_templates(self, key: TemplatesKey) -> list[str] | None:
        """The stored templates, or None when absent or damaged (they are sampled again)."""
        try:
            oid = self._refs.read(key.ref)
            if oid is None:
                return None
            templates = json.loads(self._store.get(oid, TEMPLATES_KIND))["templates"]
        except (NmkevcError, ValueError, KeyError, TypeError):
            return None
        if isinstance(templates, list) and all(isinstance(t, str) for t in templates):
            return templates
        return None

    def put_templates(self, key: TemplatesKey, templates: list[str]) -> str:
        legacy = key.ref == CONTEXT + key.base  # the payload every earlier version wrote, byte for byte
        rule = {"seed": key.seed} if legacy else key.rule()
        payload = json.dumps({"base": key.base, **rule, "templates": templates}, sort_keys=True)
        oid = self._store.put(TEMPLATES_KIND, payload.encode("utf-8"))
        self._refs.set(key.ref, oid, "context templates")
        return oid
