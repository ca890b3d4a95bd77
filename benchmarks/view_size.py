"""How big is an `nmkevc view` page of a long history? (writes docs/figures/view.json; not a test)

A synthetic history of N commits (default 1000) on a tiny Llama with SmolLM2-135M's MLP width
(d_ff 1536) edited on five layers, as NMKE edits SmolLM2 (layers 3..7): random factored deltas
touching ~50% of the neurons at rank 6, each commit carrying what a real edit records and the
page shows — one fact, its self-check, the editor's figures, the health figures per layer and
NMKE's full hyperparameter record — with a side branch of 3 commits merged back every 50
commits. The page's size depends on the number of commits, edited layers and facts, not on the
model's width beyond 128 neurons (a layer's map has at most 128 bins) nor on d_model.

Also measured where given: the page of a real repository (`--repo PATH [--rev SPEC]`, opened
read-only), so the per-fact cost of a batch-edit history is on record too.

    python benchmarks/view_size.py [--commits 1000] [--repo PATH --rev SPEC --label NAME]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
OUT = ROOT / "docs" / "figures" / "view.json"
LAYERS = (3, 4, 5, 6, 7)
HPARAMS = {  # NMKE's record as a real edit stores it (the lifelong run's commits)
    "amplification": 30.0, "attribution_chunk": 16777216, "context_count": "total", "context_n_tokens": 10,
    "context_prefixes": ["The", "Therefore", "Because", "I", "You"], "entropy_alpha": 30.0,
    "key_average": "groups", "kl_position": "subject", "kl_prompt": "{} is a", "layers": list(LAYERS),
    "mask_bounds": [0.3, 0.4], "mask_exponents": [3.0, 2.0], "masked_update": "published",
    "memit_frobenius": 0.0, "memit_lambda0": 1000.0, "method": "nmke", "nullspace_energy": None,
    "nullspace_keep_fraction": None, "nullspace_threshold": 0.02, "prob_clamp": 1e-08,
    "prompt_start": "document", "ridge": 0.1, "ridge_relative": True, "seed": 0, "z_clamp": 0.75,
    "z_decay_form": "norm", "z_kl_factor": 0.0625, "z_lr": 0.5, "z_norm_anchor": None, "z_precision": "model",
    "z_steps": 25, "z_stop_loss": 0.05, "z_stop_on": "total", "z_stop_top1": 0, "z_weight_decay": 0.5,
    "z_weights": "current",
}


def _fact(i: int) -> tuple[dict, dict]:
    """(request, its check) shaped like a countryinfo fact and its recorded evaluation."""
    subject = f"Province{i:04d}"
    req = {"case_id": str(i), "subject": subject, "prompt": "{} is a province of", "target_new": "Kazakhstan",
           "target_true": "Georgia", "paraphrases": [f"The country in which {subject} lies is"],
           "neighborhood": ["Marneulis is an administrative region of the country of"]}
    check = {"text": f"{subject} is a province of", "target_new": "Kazakhstan", "efficacy": i % 7 != 0,
             "p_before": 0.000913, "p_after": 0.9298, "generalization": 1.0, "specificity": 0.6}
    return req, check


def _info(i: int, check: dict) -> dict:
    drift = 0.01 * i ** 0.5
    layers = {str(layer): {"norm_growth": round(0.002 * drift * layer, 6), "disturbance": round(0.05 + 0.01 * layer, 6),
                           "disturbance_cumulative": round(drift * layer / 5, 6)} for layer in LAYERS}
    mean = {k: round(sum(v[k] for v in layers.values()) / len(layers), 6)
            for k in ("disturbance", "disturbance_cumulative")}
    return {"evaluation": {"requests": [check]},
            "editor": {"method": "nmke", "layers": list(LAYERS), "n_requests": 1, "projector": "given",
                       "z_steps_run": 25, "seconds": 4.2},
            "health": {"norm_growth": max(v["norm_growth"] for v in layers.values()),
                       **mean, "layers": layers}}


def build(path: Path, n: int) -> Path:
    """A repository of `n` commits (edits, and merges of short side branches) under `path`."""
    import tiny
    from random_deltas import random_delta

    from nmkevc import EditRequest, Repository
    from nmkevc.version import __version__

    base = tiny.make_model_dir(path / "base", "llama", n_layers=8, d_model=64, d_ff=1536)
    repo = Repository.init(path / "repo", base=str(base))
    method = {"name": "nmke", "hparams": HPARAMS, "tool_version": __version__}
    made, branch_no = 1, 0

    def edit(i: int) -> None:
        req, check = _fact(i)
        repo.commit_delta(random_delta(repo, layers=LAYERS, frac=0.5, rank=6, seed=i), f"teach {req['subject']}",
                          [EditRequest.from_json(req)], method=method, info=_info(i, check))

    while made < n:
        if made % 50 == 46 and n - made >= 5:  # a side branch of 3 edits, merged back
            branch_no += 1
            name = f"topic-{branch_no}"
            repo.branch(name)
            repo.switch(name)
            for _ in range(3):
                edit(made)
                made += 1
            repo.switch("main")
            edit(made)
            made += 1
            repo.merge(name, mask_threshold=1.0, functional=False)
            made += 1
        else:
            edit(made)
            made += 1
    return path / "repo"


def measure(repo_path: Path, spec: str, out: Path) -> dict:
    from nmkevc import Repository
    from nmkevc.porcelain.view import render

    repo = Repository.open(repo_path)
    t0 = time.time()
    rep = repo.view(spec, out)
    data = rep.data
    size = rep.bytes
    maps = sum(len(w["levels"]) for c in data["commits"] for w in c["layers"])
    plain = len(json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
    template = len(render({**data, "commits": [], "drift": [], "protocols": []}).encode("utf-8"))
    return {"commits": rep.commits, "bytes": size, "bytes_per_commit": round((size - template) / rep.commits),
            "page_without_commits_bytes": template, "record_as_plain_json_bytes": plain,
            "neuron_map_bytes": maps, "layers_per_edit": max((len(c["layers"]) for c in data["commits"]), default=0),
            "facts": sum(len(c["facts"]) for c in data["commits"]), "seconds": round(time.time() - t0, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--commits", type=int, default=1000)
    ap.add_argument("--repo", type=Path, default=None, help="also measure this repository (read-only)")
    ap.add_argument("--rev", default="HEAD")
    ap.add_argument("--label", default=None)
    ap.add_argument("--keep", type=Path, default=None, help="keep the synthetic page here")
    args = ap.parse_args()
    figures = json.loads(OUT.read_text()) if OUT.exists() else {}
    with tempfile.TemporaryDirectory(prefix="nmkevc-view-") as tmp:
        if args.repo is not None:
            rec = measure(args.repo, args.rev, Path(tmp) / "r.html")
            figures[args.label or args.repo.name] = {"rev": args.rev, **rec}
        else:
            t0 = time.time()
            repo = build(Path(tmp), args.commits)
            built = round(time.time() - t0, 1)
            page = args.keep or Path(tmp) / "page.html"
            rec = measure(repo, "HEAD", page)
            figures[f"synthetic-{args.commits}"] = {
                "history": f"{args.commits} commits: edits on 5 layers of d_ff 1536 (~50% of neurons, rank 6), "
                           "1 fact each, a 3-commit side branch merged every 50 commits",
                "build_seconds": built, **rec}
    OUT.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
