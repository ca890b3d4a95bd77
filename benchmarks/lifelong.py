"""Lifelong-editing benchmark: NMKE vs AlphaEdit vs MEMIT on the embedded model.

T real-world counterfactual edits (the countryinfo fact set's test part, MIT) applied in
sequential batches of B through a real repository (each batch a commit, each method a
branch); after every batch all edits so far are evaluated. This is `nmkevc lifelong` run
in a repository of its own, plus a record of the machine: it checkpoints after every
batch, so running the same command again resumes a run that was stopped.

    python benchmarks/lifelong.py [--edits 1000] [--batch 100] [--methods nmke,alphaedit,memit]
                                  [--out results/lifelong] [--repo DIR] [--neighbours 5]
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from nmkevc import Repository
from nmkevc.evaluation.lifelong import write_outputs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--edits", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--methods", default="nmke,alphaedit,memit")
    ap.add_argument("--out", default="results/lifelong")
    ap.add_argument("--repo", default=None,
                    help="Repository to run in (default: OUT/repo, kept so that a stopped run resumes).")
    ap.add_argument("--neighbours", type=int, default=5, help="Neighbourhood prompts evaluated per edit.")
    ap.add_argument("--split", default="test", choices=["dev", "test"])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = Path(args.out)
    repo_dir = Path(args.repo) if args.repo else out / "repo"
    repo = Repository.open(repo_dir) if (repo_dir / ".nmkevc").exists() else Repository.init(repo_dir)
    print(f"repository {repo.root}; {args.edits} edits in batches of {args.batch}; "
          f"torch threads {torch.get_num_threads()}")
    t0 = time.time()
    run = repo.lifelong("countryinfo", args.edits, args.batch, args.methods.split(","), out_dir=out,
                        seed=args.seed, neighbours=args.neighbours, split=args.split)
    run.info.update({"machine": f"{platform.machine()}, {torch.get_num_threads()} threads, "
                                f"{platform.processor() or ''}",
                     "date": time.strftime("%Y-%m-%d"), "seconds_this_session": round(time.time() - t0, 1),
                     "command": "python benchmarks/lifelong.py " + " ".join(
                         f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None)})
    for p in write_outputs(run, out):
        print("wrote", p)
    print(run.table())


if __name__ == "__main__":
    main()
