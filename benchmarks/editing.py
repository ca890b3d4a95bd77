"""Editing benchmark on the embedded SmolLM2-135M-Instruct (prints figures; not a test).

Each case runs in its own process so its peak memory (max RSS) is its own:
- the statistics pass (covariance of 5 layers' keys over the shipped corpus);
- one NMKE edit, a batch of 10 and a batch of 100 (countryinfo counterfactuals),
  each on a repository whose statistics are already computed.
Reports wall time, peak RSS, stored bytes per edit, and mask sizes.

    python benchmarks/editing.py [--batches 1,10,100] [--method nmke] [--stats-tokens 20000]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def requests(n: int, seed: int = 0):
    from nmkevc.datasets import build_countryinfo
    from nmkevc.datasets.counterfact import counterfact_record
    from nmkevc.datasets.records import Located

    recs = build_countryinfo(seed=seed)
    random.Random(seed).shuffle(recs)
    return [counterfact_record(Located(f"record {i}", r)).request for i, r in enumerate(recs[:n])]


def case(repo_dir: str, what: str, n: int, method: str, stats_tokens: int) -> dict:
    from nmkevc import Repository

    repo = Repository.open(repo_dir)
    t0 = time.time()
    if what == "stats":
        from nmkevc.corpus import load_corpus
        from nmkevc.porcelain.edit_inputs import second_moments

        base = repo.commit(repo.resolve()).base
        second_moments(repo.plumbing, base, list(range(3, 8)), load_corpus(), stats_tokens)
        return {"case": "statistics", "seconds": round(time.time() - t0, 2), "peak_mib": round(peak_mib())}
    repo.load_model()
    load_s = time.time() - t0
    t1 = time.time()
    out = repo.edit(requests(n), method=method, stats_tokens=stats_tokens)
    secs = time.time() - t1
    timings = out.info["editor"].get("timings", {})
    return {
        "case": f"{method} batch {n}", "seconds": round(secs, 2), "load_seconds": round(load_s, 2),
        "peak_mib": round(peak_mib()), "stored_bytes": out.stored_bytes,
        "bytes_per_edit": round(out.stored_bytes / n), "efficacy": sum(c["efficacy"] for c in out.checks) / n,
        "mask_fraction": round(sum(x["neurons"] / x["d_ff"] for x in out.layers) / len(out.layers), 3),
        "timings": {k: round(v, 1) for k, v in timings.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", default="1,10,100")
    ap.add_argument("--method", default="nmke")
    ap.add_argument("--stats-tokens", type=int, default=20_000)
    ap.add_argument("--case", nargs=3, metavar=("REPO", "WHAT", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        repo_dir, what, n = args.case
        print(json.dumps(case(repo_dir, what, int(n), args.method, args.stats_tokens)))
        return
    from nmkevc import Repository

    work = Path(tempfile.mkdtemp(prefix="nmkevc-editbench-"))
    Repository.init(work / "repo")
    rows = []
    for what, n in [("stats", 0)] + [("edit", int(b)) for b in args.batches.split(",")]:
        cmd = [sys.executable, __file__, "--method", args.method, "--stats-tokens", str(args.stats_tokens),
               "--case", str(work / "repo"), what, str(n)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"case {what} {n} failed:\n{proc.stderr[-2000:]}")
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\n{'case':<18} {'wall s':>8} {'peak MiB':>9} {'bytes/edit':>11} {'efficacy':>9} {'mask':>6}")
    for r in rows:
        print(f"{r['case']:<18} {r['seconds']:>8.1f} {r['peak_mib']:>9} {r.get('bytes_per_edit', ''):>11} "
              f"{r.get('efficacy', ''):>9} {r.get('mask_fraction', ''):>6}")


if __name__ == "__main__":
    main()
