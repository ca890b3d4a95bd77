"""benchmarks/step4_sweep.py: Steps 1-3's cache (safetensors + JSON, never pickle) reads back
what was written, and a batch replaces the batch of the same facts."""

import importlib.util
import json
import sys
from pathlib import Path

import torch

from nmkevc.editing.zopt import ZResult

ROOT = Path(__file__).resolve().parent.parent


def _sweep():
    sys.path.insert(0, str(ROOT / "benchmarks"))  # as when the scripts run
    try:
        spec = importlib.util.spec_from_file_location("step4_sweep", ROOT / "benchmarks" / "step4_sweep.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules["step4_sweep"] = mod  # as an import would (its dataclasses look themselves up there)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def test_cache_round_trip(tmp_path):
    mod = _sweep()
    g = torch.Generator().manual_seed(0)
    z = ZResult(z=torch.randn(8, 3, generator=g), h=torch.randn(8, 3, generator=g),
                delta=torch.randn(8, 3, generator=g), nll=[0.1, 0.2, 0.3], kl=[0.0, 0.01, 0.02], steps=[25, 20, 3])
    masks = {3: torch.rand(16, generator=g) > 0.5, 4: torch.ones(16, dtype=torch.bool)}
    info = {3: {"kept": int(masks[3].sum()), "rho_r": 0.3}, 4: {"kept": 16, "rho_r": 0.31}}
    path = tmp_path / "cache.safetensors"
    mod._save_cache(path, z, masks, info, (1.0, 2.0, 3.5))
    z2, masks2, info2, times = mod._load_cache(path)
    for name in ("z", "h", "delta"):
        assert torch.equal(getattr(z2, name), getattr(z, name))
    assert (z2.nll, z2.kl, z2.steps) == (z.nll, z.kl, z.steps)
    assert masks2.keys() == masks.keys() and all(torch.equal(masks2[k], masks[k]) for k in masks)
    assert info2 == info and times == (1.0, 2.0, 3.5)
    assert not path.read_bytes().startswith(b"\x80")  # not a pickle


def test_merge_batch_replaces_the_same_facts(tmp_path):
    mod = _sweep()
    path = tmp_path / "sweep.json"

    def batch(offset, tag):
        return {"facts": {"seed": 0, "offset": offset, "n": 10}, "tag": tag}

    path.write_text(json.dumps(mod.merge_batch(path, batch(10, "a"))))
    path.write_text(json.dumps(mod.merge_batch(path, batch(0, "b"))))
    data = mod.merge_batch(path, batch(10, "c"))
    assert [(b["facts"]["offset"], b["tag"]) for b in data["batches"]] == [(0, "b"), (10, "c")]
