"""Lifelong-editing benchmark: NMKE vs AlphaEdit vs MEMIT on the embedded model.

T real-world counterfactual edits (built from countryinfo, MIT) applied in sequential
batches of B through a real repository (each batch a commit, each method a branch);
after every batch all edits so far are evaluated. Writes results.json and PNG plots.

    python benchmarks/lifelong.py [--edits 80] [--batch 10] [--methods nmke,alphaedit,memit]
                                  [--out results/lifelong] [--repo DIR] [--neighbours 5]
"""

from __future__ import annotations

import argparse
import platform
import random
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from nmkevc import Repository
from nmkevc.datasets import build_countryinfo
from nmkevc.datasets.counterfact import counterfact_record
from nmkevc.datasets.records import Located
from nmkevc.evaluation.lifelong import markdown_table, run_lifelong, write_outputs
from nmkevc.evaluation.metrics import EvalCase


def load_cases(n: int, seed: int, neighbours: int, split: str | None = "test") -> list[EvalCase]:
    """n records of the fact set's `split` part (reported figures use the test part only)."""
    records = build_countryinfo(seed=seed, split=split)
    random.Random(seed).shuffle(records)
    cases = []
    for i, rec in enumerate(records[:n]):
        cf = counterfact_record(Located(f"countryinfo record {i}", rec))
        req = replace(cf.request, neighborhood=cf.request.neighborhood[:neighbours])
        answers = cf.neighborhood_answers[:neighbours] if cf.neighborhood_answers else None
        cases.append(EvalCase(req, answers))
    return cases


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--edits", type=int, default=80)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--methods", default="nmke,alphaedit,memit")
    ap.add_argument("--out", default="results/lifelong")
    ap.add_argument("--repo", default=None, help="Repository to run in (default: a new one in a temp dir).")
    ap.add_argument("--neighbours", type=int, default=5, help="Neighbourhood prompts evaluated per edit.")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    cases = load_cases(args.edits, args.seed, args.neighbours)
    if args.repo and Path(args.repo, ".nmkevc").exists():
        repo = Repository.open(args.repo)
    else:
        repo = Repository.init(args.repo or tempfile.mkdtemp(prefix="nmkevc-lifelong-"))
    print(f"repository {repo.root}; {len(cases)} edits in batches of {args.batch}; torch threads "
          f"{torch.get_num_threads()}")
    t0 = time.time()
    run = run_lifelong(repo, cases, args.batch, tuple(args.methods.split(",")))
    run.info = {"machine": f"{platform.machine()}, {torch.get_num_threads()} threads, {platform.processor() or ''}",
                "date": time.strftime("%Y-%m-%d"), "dataset": f"countryinfo (seed {args.seed})",
                "neighbours": args.neighbours, "seconds": round(time.time() - t0, 1), "repository": str(repo.root)}
    for p in write_outputs(run, Path(args.out)):
        print("wrote", p)
    (Path(args.out) / "table.md").write_text(markdown_table(run) + "\n", "utf-8")
    print(f"{'method':>9} {'eff':>6} {'gen':>6} {'spec':>6} {'ret':>6} {'ppl':>8} {'s/batch':>8} {'MiB':>7}")
    for method, p in run.final().items():
        pts = [x for x in run.points if x.method == method]
        print(f"{method:>9} {p.efficacy:6.3f} {p.generalization or 0:6.3f} {p.specificity or 0:6.3f} "
              f"{p.retention:6.3f} {p.perplexity_change or 0:+8.2%} {sum(x.seconds for x in pts) / len(pts):8.1f} "
              f"{p.stored_bytes / 2**20:7.2f}")


if __name__ == "__main__":
    main()
