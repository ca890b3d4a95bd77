"""Step 1's arithmetic floor on this machine: how fast z can be at best, in float32.

Issue #8 asks for a batch of 100 facts in <= 150 s. Step 1 (the target vectors z) replays
the layers above the last edited layer, forward and backward, on every row of every request
(the context templates, the bare prompt and the KL prompt), for up to 25 Adam steps (the
reference code's count), then reads the unembedding at every target position. This script
counts those multiply-adds exactly for the first N facts of the lifelong run (their real
tokenization and the engine's own packing, `editing.zopt.plan_packs`; the steps each request
took in the lifelong run's first commit when --repo holds it, else all 25), measures the
machine's matrix-product throughput at the shapes the replay uses, and reports the floor,
FLOPs / throughput, beside the z time the lifelong run measured. Weight gradients are not
needed (the weights are frozen): backward costs one product per forward product.

    python benchmarks/z_floor.py [--repo OUT/repo] [--n 100]   # writes docs/figures/z_floor.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "docs" / "figures" / "z_floor.json"


def linear_params(module) -> int:
    """Weights of the matrix products one token goes through in `module` (norms and biases aside)."""
    import torch

    return sum(m.weight.numel() for m in module.modules() if isinstance(m, torch.nn.Linear))


def throughput(rows: int, d_in: int, d_out: int, seconds: float = 3.0) -> float:
    """GFLOP/s of (rows × d_in) @ (d_in × d_out) in float32, forward plus the input gradient."""
    import torch

    x = torch.randn(rows, d_in, requires_grad=True)
    w = torch.randn(d_out, d_in)
    for _ in range(3):
        torch.nn.functional.linear(x, w).sum().backward()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        torch.nn.functional.linear(x, w).sum().backward()
        n += 1
    return 2 * 2 * rows * d_in * d_out * n / (time.perf_counter() - t0) / 1e9


def first_batch_steps(repo, requests) -> tuple[list[int] | None, dict | None, str | None]:
    """z_steps and timings of the commit that edited exactly `requests` from the root, if any."""
    wanted = [r.to_json() for r in requests]
    for name, cid in repo.branches().items():
        while cid:
            c = repo.commit(cid)
            if list(c.requests) == wanted and len(c.parents) == 1 and not repo.commit(c.parents[0]).parents:
                editor = c.info.get("editor") or {}
                return editor.get("z_steps"), editor.get("timings"), name
            cid = c.parents[0] if c.parents else None
    return None, None, None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", default=None, help="A lifelong run's repository (for the measured steps and z time).")
    ap.add_argument("--n", type=int, default=100, help="Facts in the batch.")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    import torch

    from nmkevc import Repository
    from nmkevc.editing import EditHparams
    from nmkevc.editing.zopt import PACK_TOKENS, build_rows, plan_packs
    from nmkevc.models.adapters import adapter_for
    from nmkevc.porcelain.datasets import eval_cases
    from nmkevc.porcelain.edit_inputs import context_templates, templates_key

    tmp = None
    if args.repo:
        repo = Repository.open(args.repo)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="nmkevc-zfloor-")
        repo = Repository.init(Path(tmp.name) / "repo")
    root = repo.resolve("HEAD")
    while repo.commit(root).parents:
        root = repo.commit(root).parents[0]
    base = repo.commit(root).base
    hp = EditHparams()
    requests = [c.request for c in eval_cases("countryinfo", args.n, split="test")]
    steps, timings, branch = first_batch_steps(repo, requests)
    state = repo.load_model(root)
    model, tok = state.model, state.tokenizer
    adapter = adapter_for(model.config.to_dict())
    layers = hp.layers or adapter.default_layers(adapter.num_layers(model))
    top = max(layers)
    upper = list(adapter.layer_modules(model))[top + 1:]
    templates = context_templates(repo.plumbing, templates_key(base, hp))
    rows = build_rows(tok, requests, templates, hp)
    packs = plan_packs(rows.batch, PACK_TOKENS)
    tail = (rows.batch.lengths - rows.batch.subject_pos).tolist()
    length = rows.batch.lengths.tolist()
    req_steps = steps if steps and len(steps) == args.n else [hp.z_steps] * args.n

    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    per_token_linear = sum(2 * linear_params(m) for m in upper)  # forward FLOPs per re-run token
    token_steps, attn_flops = 0, 0.0
    for pack in packs:
        width = max(tail[r] for r in pack.tolist())
        for r in pack.tolist():
            s = req_steps[int(rows.request[r])]
            token_steps += width * s
            # scores and weighted values over the row's whole context, per head and upper layer
            attn_flops += s * width * 2 * 2 * cfg.num_attention_heads * head_dim * length[r] * len(upper)
    reads = [0] * args.n  # unembedding reads per request per step: its targets and its KL position
    for row in rows.t_row.tolist():
        reads[int(rows.request[row])] += 1
    for r in range(args.n):
        reads[r] += 1
    vocab, d_model = cfg.vocab_size, cfg.hidden_size
    head_flops = sum(2 * d_model * vocab * reads[r] * req_steps[r] for r in range(args.n))
    total = 2 * (per_token_linear * token_steps + attn_flops + head_flops)  # forward + input gradient

    torch.set_num_threads(torch.get_num_threads())
    d_ff = cfg.intermediate_size
    shapes = {f"{PACK_TOKENS}x{d_model}->{d_ff}": (PACK_TOKENS, d_model, d_ff),
              f"{PACK_TOKENS}x{d_ff}->{d_model}": (PACK_TOKENS, d_ff, d_model),
              f"{PACK_TOKENS}x{d_model}->{d_model}": (PACK_TOKENS, d_model, d_model)}
    gflops = {k: round(throughput(*v), 1) for k, v in shapes.items()}
    best = max(gflops.values())
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, "
                   f"torch {torch.__version__}",
        "load_before": round(os.getloadavg()[0], 2),
        "facts": args.n,
        "steps_source": f"lifelong commit on {branch}" if steps else f"all {hp.z_steps} (no lifelong commit found)",
        "steps_mean": round(sum(req_steps) / len(req_steps), 2),
        "rows": int(rows.request.numel()),
        "packs": len(packs),
        "upper_layers": len(upper),
        "rerun_token_steps": token_steps,
        "unembedding_reads": sum(reads),
        "tflop": {"layers": round(2 * per_token_linear * token_steps / 1e12, 2),
                  "attention": round(2 * attn_flops / 1e12, 2), "unembedding": round(2 * head_flops / 1e12, 2),
                  "total": round(total / 1e12, 2)},
        "matmul_gflops": gflops,
        "floor_seconds": round(total / (best * 1e9), 1),
        "measured_z_seconds": round(timings["z"], 1) if timings and "z" in timings else None,
    }
    if result["measured_z_seconds"]:
        result["achieved_share_of_best_matmul"] = round(result["floor_seconds"] / result["measured_z_seconds"], 3)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
