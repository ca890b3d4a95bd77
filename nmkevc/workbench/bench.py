"""`Workbench`: one repository's models — its bases on disk, the live model and the base
model, materialised states, tokenizers and corpora.

Storage (objects, refs, lock, caches of derived objects, history) is the `Repo` below;
everything that loads, verifies or runs a model is here. Caches belong to this object,
never to a module. Models are handed out as `ModelState` handles at a state: the shared
live model moves only when someone asks for another state, and the base is read from a
model of its own, so reading it never moves the live one.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..bases import BaseManifest, BaseSource
from ..corpus import Corpus, load_corpus
from ..errors import BaseMismatchError
from ..models.runtime import Runtime
from ..models.source import resolve_dir
from ..repo.repository import Repo
from ..storage.fsutil import atomic_write
from ..tensorio import dtype_name
from . import materialise as mat

if TYPE_CHECKING:
    import torch

    from ..models.adapters import ArchAdapter
    from ..models.live import LiveModel, ModelState
    from ..models.weights import BaseWeights

Progress = Callable[[int, int], None] | None


class Workbench:
    def __init__(self, repo: Repo, runtime: Runtime | None = None):
        """`runtime`: where and in which dtype models run (None: the repository's default)."""
        self.repo = repo
        settings = repo.config.settings
        self.runtime = runtime or Runtime(**{k: settings[k] for k in ("device", "dtype") if k in settings})
        self._verified: dict[str, Path] = {}
        self._adapters: dict[str, ArchAdapter] = {}
        self._live: LiveModel | None = None
        self._live_base: str | None = None
        self._base_model: tuple[str, LiveModel] | None = None
        self._corpora: dict[str, Corpus] = {}
        self._tokenizers: dict[str, object] = {}

    @classmethod
    def create(cls, path: str | Path, source: BaseSource, progress: Progress = None, branch: str = "main",
               message: str | None = None, runtime: Runtime | None = None) -> Workbench:
        """A new repository on `source`: its files hashed into a manifest, then `Repo.create`."""
        from ..models.manifest import build_manifest

        model_dir = resolve_dir(source, progress=progress)
        hash_cache: dict = {}
        manifest = build_manifest(model_dir, progress=progress, hash_cache=hash_cache)
        settings = {} if runtime is None else {"device": runtime.device, "dtype": runtime.dtype}
        repo = Repo.create(path, source, manifest, hash_cache=hash_cache, branch=branch, message=message,
                           settings=settings)
        bench = cls(repo)
        bench._verified[repo.commit(repo.resolve("HEAD")).base] = model_dir
        return bench

    # -- bases ---------------------------------------------------------------------------
    def adapter(self, base_id: str) -> ArchAdapter:
        """The architecture adapter of a recorded base (from its manifest's config)."""
        a = self._adapters.get(base_id)
        if a is None:
            from ..models.adapters import adapter_for

            a = self._adapters[base_id] = adapter_for(self.repo.manifest(base_id).config)
        return a

    def base_dir(self, base_id: str, progress: Progress = None, full: bool = False) -> Path:
        """The base's directory, verified tensor by tensor against its manifest.

        The fast path trusts the hash cache for a tensor file whose (path, size, mtime,
        inode) is unchanged; config and tokenizer files are always re-read. `full`
        rehashes every tensor and refreshes the cache with what it finds."""
        if base_id in self._verified and not full:
            return self._verified[base_id]
        from ..models.manifest import build_manifest

        source = self.repo.base_source(base_id)
        model_dir = resolve_dir(source, progress=progress)
        cache_path = self.repo.dir / "cache" / "hashes.json"
        try:
            hash_cache = json.loads(cache_path.read_text("utf-8"))
            if not isinstance(hash_cache, dict):
                hash_cache = {}
        except (OSError, ValueError):
            hash_cache = {}
        fresh: dict = {} if full else hash_cache
        found = build_manifest(model_dir, progress=progress, hash_cache=fresh)
        if full:
            hash_cache.update(fresh)  # what the files hold now replaces what was trusted
        with contextlib.suppress(OSError):
            atomic_write(cache_path, json.dumps(hash_cache).encode(), what="cache")
        problem = _manifest_difference(self.repo.manifest(base_id), found)
        if problem:
            self._verified.pop(base_id, None)
            raise BaseMismatchError(
                f"the base at {source.describe()} is not the one this repository was built on "
                f"({problem}); refusing to use it"
            )
        self._verified[base_id] = model_dir
        return model_dir

    def add_base(self, source: BaseSource) -> str:
        """Record another base (e.g. for an orphan branch on a newer model)."""
        from ..models.manifest import build_manifest

        return self.repo.record_base(source, lambda: build_manifest(resolve_dir(source)))

    def relocate_base(self, base_id: str, source: BaseSource) -> None:
        """Point a recorded base at a new location; the content must match."""

        def verify() -> None:
            self._verified.pop(base_id, None)
            self.base_dir(base_id)

        self.repo.move_base(base_id, source, verify)

    def weights(self, base_id: str) -> BaseWeights:
        """The base's tensors as stored, read from its verified directory."""
        from ..models.weights import BaseWeights

        return BaseWeights(self.base_dir(base_id), self.adapter(base_id))

    # -- text ----------------------------------------------------------------------------
    def corpus(self, path: str | Path | None = None) -> Corpus:
        """A text corpus (None = the shipped one), read and hashed once per workbench."""
        key = str(Path(path).resolve()) if path is not None else ""
        if key not in self._corpora:
            self._corpora[key] = load_corpus(path)
        return self._corpora[key]

    def tokenizer(self, base_id: str):
        """The base's tokenizer, without loading its weights (for checks made before any
        forward pass); a loaded model's own when there is one."""
        loaded = [(self._live_base, self._live), *([self._base_model] if self._base_model else [])]
        for bid, live in loaded:
            if live is not None and bid == base_id:
                return live.tokenizer
        tok = self._tokenizers.get(base_id)
        if tok is None:
            from ..models.loading import load_tokenizer

            tok = self._tokenizers[base_id] = load_tokenizer(self.base_dir(base_id))
        return tok

    # -- models --------------------------------------------------------------------------
    def model_at(self, cid: str, progress: Progress = None) -> ModelState:
        """The model at commit cid: moving between commits rewrites only changed weights."""
        repo = self.repo
        return self.model_of(repo.commit(cid).base, repo.effective(cid), progress=progress, label=cid[:12])

    def model_of(self, base_id: str, commits: list[str], extra: Sequence[str] = (),
                 progress: Progress = None, label: str | None = None) -> ModelState:
        """The model of any effective set (plus stored, uncommitted deltas), as a handle.

        The live model is shared: handles given out earlier for another state refuse use
        from now on (StaleModelError) rather than answer for this one."""
        from ..models.live import ModelState

        model_dir = self.base_dir(base_id, progress=progress)
        if self._live is None or self._live_base != base_id:
            self._live = None
            self._live = self._load(base_id, model_dir)
            self._live_base = base_id
        key = self.repo.state_key(base_id, commits, extra)
        if self._live.state_key != key:
            # a fresh model rewrites every edited weight: a long history's come from (and go to)
            # the materialised cache; later moves rewrite only what changed, as before
            fresh = not self._live.applied and mat.is_long(self.repo, commits, extra)
            ready = mat.materialise(self.repo, base_id, commits, self._live.weights, extra) if fresh else None
            self._live.sync(self.repo.plan_of(commits, extra), key, ready)
        return ModelState(self._live, key, label or "a revision")

    def _load(self, base_id: str, model_dir, state_key: str | None = None, frozen: bool = False):
        """A model of the base, sharing the one tokenizer this workbench keeps for it."""
        from ..models.live import LiveModel

        live = LiveModel.load(model_dir, state_key, frozen=frozen, runtime=self.runtime,
                              tokenizer=self._tokenizers.get(base_id))
        self._tokenizers.setdefault(base_id, live.tokenizer)
        return live

    def base_model(self, base_id: str, progress: Progress = None) -> ModelState:
        """The unedited base, from a model of its own (loaded on first use, then kept with
        this object): statistics, context templates and base references read it without
        moving the live model anyone else holds."""
        from ..models.live import ModelState

        if self._base_model is None or self._base_model[0] != base_id:
            self._base_model = None
            key = self.repo.state_key(base_id, [])
            self._base_model = (base_id, self._load(base_id, self.base_dir(base_id, progress=progress), key,
                                                    frozen=True))
        live = self._base_model[1]
        return ModelState(live, live.state_key or "", f"base {base_id[:12]}")

    # -- materialised states -------------------------------------------------------------
    def materialise(self, base_id: str, commits: list[str], weights: BaseWeights,
                    extra: Sequence[str] = ()) -> dict[str, torch.Tensor]:
        return mat.materialise(self.repo, base_id, commits, weights, extra)

    def materialised_buffers(self, base_id: str, commits: list[str], weights: BaseWeights) -> dict[str, object]:
        return mat.materialised_buffers(self.repo, base_id, commits, weights)

    def keep_live_state(self, cid: str) -> bool:
        """Put the live model's edited weights into the materialised cache when it holds cid's
        state (as it does right after an edit's checks), so the first export or fresh load of
        a long history reads them instead of recomputing every delta. Only where the model
        runs at the base's dtype (its weights are then exactly `materialise`'s sums); best
        effort, as the cache itself. True when a state was stored."""
        repo, live = self.repo, self._live
        base_id = repo.commit(cid).base
        commits = repo.effective(cid)
        key = repo.state_key(base_id, commits)
        if live is None or self._live_base != base_id or live.state_key != key \
                or not mat.is_long(repo, commits) or repo.materialised.path(key).exists():
            return False
        out = {}
        for name in repo.plan_of(commits):
            t = live.parameter(name).detach()
            if dtype_name(t.dtype) != live.weights.spec(name).dtype:
                return False
            out[name] = t.cpu()
        repo.materialised.put(key, out)
        return True


def _manifest_difference(want: BaseManifest, found: BaseManifest) -> str:
    if want.architecture != found.architecture:
        return f"architecture {found.architecture} != {want.architecture}"
    missing = sorted(set(want.tensors) - set(found.tensors))
    if missing:
        return f"tensor {missing[0]} is missing"
    for name, t in want.tensors.items():
        if found.tensors[name] != t:
            return f"tensor {name} differs"
    extra = sorted(set(found.tensors) - set(want.tensors))
    if extra:
        return f"unexpected tensor {extra[0]}"
    if want.tokenizer_sha256 != found.tokenizer_sha256:
        return "the tokenizer files differ"
    if want.config != found.config:
        return "config.json differs"
    return ""
