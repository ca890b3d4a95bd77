"""Storage and materialisation benchmark (prints figures; not a test).

Base: the embedded SmolLM2-135M-Instruct (30 layers, down_proj 576 x 1536, float32).
A "1-fact edit" here is a random factored delta of NMKE's shape: 5 layers (3..7),
~50% of neurons, rank 6, keys d_ff x 1. Reports stored bytes per commit against the
same delta stored dense and against a full checkpoint, and checkout / export time of
histories of 1, 100 and 1000 commits against copying the base weights file.

    python benchmarks/storage.py [--sizes 1,100,1000] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

from nmkevc import Repository
from nmkevc.deltas.delta import Delta, WeightDelta
from nmkevc.facts import EditRequest
from nmkevc.models.adapters import adapter_for


def fact_delta(repo, seed: int, layers=range(3, 8), frac=0.5, rank=6) -> Delta:
    base = repo.commit(repo.resolve()).base
    m = repo.plumbing.manifest(base)
    ad = adapter_for(m.config)
    g = torch.Generator().manual_seed(seed)
    ws = []
    for layer in layers:
        name = ad.weight_name(layer)
        d_model, d_ff = m.tensors[name]["shape"]
        idx = torch.randperm(d_ff, generator=g)[: int(d_ff * frac)].sort().values
        ws.append(WeightDelta(name, layer, ad.orientation, d_model, d_ff, idx,
                              torch.randn(len(idx), rank, generator=g) * 1e-3,
                              torch.randn(d_model, rank, generator=g), torch.randn(d_ff, 1, generator=g),
                              {"rho_r": 0.35, "rho_b": 0.33}))
    return Delta(tuple(ws))


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1,100,1000")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    sizes = sorted(int(x) for x in args.sizes.split(","))
    work = Path(args.workdir or tempfile.mkdtemp(prefix="nmkevc-bench-"))
    repo = Repository.init(work / "repo")
    base_id = repo.commit(repo.resolve()).base
    base_dir = repo.plumbing.base_dir(base_id)
    weights_file = next(base_dir.glob("*.safetensors"))
    ckpt_bytes = weights_file.stat().st_size
    copy_s, _ = timed(lambda: shutil.copyfile(weights_file, work / "copy.safetensors"))
    (work / "copy.safetensors").unlink()
    print(f"base: {base_dir.name}, weights file {ckpt_bytes / 2**20:.1f} MiB; copy takes {copy_s:.2f} s")

    commit_s, stored, dense = [], [], []
    tips = {}
    n = 0
    for target in sizes:
        while n < target:
            d = fact_delta(repo, seed=n)
            req = EditRequest(f"S{n}", "The answer of {} is", f"T{n}")
            t, cid = timed(lambda d=d, req=req: repo.commit_delta(d, req.subject, [req]))
            commit_s.append(t)
            did = repo.commit(cid).delta
            stored.append(repo.plumbing.store.stored_size(did))
            dense.append(d.dense_nbytes())
            n += 1
        tips[target] = repo.resolve()
    mean_stored = sum(stored) / len(stored)
    print(f"per 1-fact commit: {mean_stored / 1024:.1f} KiB stored; dense delta "
          f"{dense[0] / 1024:.1f} KiB ({dense[0] / mean_stored:.1f}x more); full checkpoint "
          f"{ckpt_bytes / 2**20:.1f} MiB ({ckpt_bytes / mean_stored:.0f}x more); "
          f"commit takes {1000 * sum(commit_s) / len(commit_s):.1f} ms")
    print(f"{'commits':>8} {'checkout (s)':>13} {'apply only (s)':>15} {'export (s)':>11} {'vs copy':>8}")
    for size, tip in tips.items():
        fresh = Repository.open(repo.dir)
        fresh.plumbing.base_dir(base_id)  # verification is cached per repository; time it apart
        t_checkout, state = timed(lambda fresh=fresh, tip=tip: fresh.plumbing.model_at(tip))
        live = state.live  # the shared model behind the handle
        plan = fresh.plumbing.plan(tip)
        live.applied.clear()  # forget what is applied: the next sync recomputes every edited weight
        t_apply, _ = timed(lambda live=live, plan=plan: live.sync(plan, "again"))
        out = work / f"export-{size}"
        t_export, _ = timed(lambda fresh=fresh, tip=tip, out=out: fresh.export(tip, out))
        shutil.rmtree(out)
        print(f"{size:>8} {t_checkout:>13.2f} {t_apply:>15.2f} {t_export:>11.2f} {t_export / copy_s:>7.1f}x")
    t_verify, _ = timed(lambda: Repository.open(repo.dir).base_dir(base_id))
    print(f"base verification (hash cache warm): {t_verify:.2f} s")
    total = sum(repo.plumbing.store.stored_size(o) for o in repo.plumbing.store)
    print(f"repository size with {n} commits: {total / 2**20:.1f} MiB")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
