"""The repository layer: its on-disk layout and config, its ref namespaces, the caches of
a base and what gc keeps."""

import hashlib
import json

import pytest
import torch

from nmkevc.errors import NotARepositoryError, RefError
from nmkevc.models.source import BaseSource
from nmkevc.repo import Repo
from nmkevc.repo.caches import StatsKey, TemplatesKey
from nmkevc.repo.layout import REPO_DIR, RepoConfig, find_repo_dir


def test_find_repo_dir_walks_up(repo, tmp_path):
    deep = repo.root / "a" / "b"
    deep.mkdir(parents=True)
    assert find_repo_dir(deep) == (repo.root / REPO_DIR).resolve()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    with pytest.raises(NotARepositoryError, match="not an nmkevc repository"):
        find_repo_dir(outside)


def test_repo_config_roundtrip_and_corruption(tmp_path):
    cfg = RepoConfig(bases={"b" * 64: BaseSource("hub", "org/m", "r1"), "a" * 64: BaseSource("local", "/m")},
                     settings={"x": 1})
    p = tmp_path / "config.json"
    cfg.save(p)
    d = json.loads(p.read_text())
    assert list(d["bases"]) == sorted(d["bases"]) and d["format"] == 1
    assert RepoConfig.load(p) == cfg
    p.write_text("{not json")
    with pytest.raises(NotARepositoryError, match="corrupt"):
        RepoConfig.load(p)
    p.write_text(json.dumps({"bases": {"x": {"kind": "local"}}}))
    with pytest.raises(NotARepositoryError, match="corrupt"):
        RepoConfig.load(p)


def test_stats_ref_name_is_stable(repo):
    """Existing repositories find their statistics: the ref is the sha256 of the key's
    canonical JSON (sorted keys, no spaces), cut to 40 hex digits."""
    key = StatsKey("b" * 64, "model.layers.1.mlp.down_proj.weight", "c" * 64, 20_000)
    text = json.dumps({"base": key.base, "corpus": key.corpus, "tokens": key.tokens, "weight": key.weight},
                      sort_keys=True, separators=(",", ":"))
    assert key.ref == "refs/stats/" + hashlib.sha256(text.encode()).hexdigest()[:40]


def test_caches_roundtrip_and_survive_gc(repo):
    r = Repo.open(repo.root)
    base_id = r.commit(r.resolve()).base
    key = StatsKey(base_id, "w", "corpus", 10)
    tkey = TemplatesKey(base_id)
    assert r.caches.find_stats(key) is None and r.caches.find_templates(tkey) is None
    sigma = torch.arange(9.0).reshape(3, 3)
    oid = r.caches.put_stats(key, sigma, count=7)
    r.caches.put_templates(tkey, ["{}", "The {}"])
    loose = r.store.put("blob", b"nothing refers to me")
    assert r.gc_roots() >= {oid, r.resolve(), base_id}
    rep = repo.gc()
    assert rep.removed == 1 and not r.store.exists(loose)
    again = Repo.open(repo.root)
    found = again.caches.find_stats(key)
    assert found is not None and found[0] == oid and torch.equal(found[1], sigma)
    assert again.caches.find_templates(tkey) == ["{}", "The {}"]


def test_templates_are_kept_per_generation_rule(repo):
    """Templates of the first rule keep the ref (and bytes) every earlier version wrote, so old
    repositories find them; another rule (the reference code's 10-token cap with a start token, or
    another seed) gets its own ref, so old templates are never reused for a new rule."""
    from nmkevc.editing import EditHparams
    from nmkevc.editing.hparams import LEGACY
    from nmkevc.workbench.statistics import templates_key

    r = Repo.open(repo.root)
    base_id = r.commit(r.resolve()).base
    first = TemplatesKey(base_id)
    assert first.ref == "refs/context/" + base_id
    oid = r.caches.put_templates(first, ["{}", "Old. {}"])
    payload = json.dumps({"base": base_id, "seed": 0, "templates": ["{}", "Old. {}"]}, sort_keys=True)
    assert r.store.get(oid, "blob") == payload.encode()
    old = {k: v for k, v in EditHparams().to_json().items() if k not in LEGACY}
    assert templates_key(base_id, EditHparams.from_json(old)) == first  # a stored commit's rule
    new = templates_key(base_id, EditHparams())
    assert new.ref != first.ref and new.ref.startswith(first.ref + "-")
    assert r.caches.find_templates(new) is None
    assert templates_key(base_id, EditHparams(seed=1)).ref not in (first.ref, new.ref)
    r.caches.put_templates(new, ["{}", "New. {}"])
    assert r.caches.find_templates(first) == ["{}", "Old. {}"]
    assert r.caches.find_templates(new) == ["{}", "New. {}"]


def test_ref_namespaces(repo):
    r = Repo.open(repo.root)
    head = r.resolve()
    r.tag_refs.set("v1", head, "tag")
    assert r.tags() == {"v1": head} and r.tag_refs.ref("v1") == "refs/tags/v1"
    assert r.branches() == {"main": head} and r.branch_refs.read("nope") is None
    with pytest.raises(RefError, match="not a valid tag name"):
        r.tag_refs.check_name("bad..name")
    r.tag_refs.delete("v1", "gone")
    assert r.tags() == {}
