"""Where a lifelong run's specificity goes: each batch's neighbourhood prompts, scored on the
unedited model, right after the batch's own commit, and after every later commit.

The run's specificity at T averages the neighbours of all T facts so far, so a falling curve
mixes two causes: a batch's own edit spilling onto its neighbours (immediate bleed, read at its
own commit) and later edits eroding the neighbours of earlier ones (read at later commits).
This reads the run's repository (the branch of each method, one commit per batch) and splits
them, per batch. The figures go to specificity_by_batch.json beside results.json.

With --by-neighbour it splits the other way, at each method's last evaluated T: the neighbourhood
prompts of all T facts, scored on the unedited model and on the state after T edits, by what the
history did to each neighbour's own subject (`nmkevc.evaluation.neighbours`: untouched, edited
under another relation, or its very fact edited), into specificity_by_neighbour.json.

    python benchmarks/lifelong_specificity.py --repo OUT/repo --results DIR [--methods a,b] [--by-neighbour]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def batch_commits(plumbing, tip: str, n_batches: int) -> list[str]:
    """The unedited commit the branch starts from (the root of its first-parent chain), then its
    first `n_batches` commits, oldest first: the states after each batch, whatever came later."""
    chain = [tip]
    while parents := plumbing.commit(chain[-1]).parents:
        chain.append(parents[0])
    chain.reverse()
    if len(chain) <= n_batches:
        raise SystemExit(f"error: the branch has fewer than {n_batches} batch commits")
    return chain[: n_batches + 1]


def specificity_by_batch(repo, cases: list, batch: int, commits: list[str]) -> list[dict]:
    """Per batch b: specificity of its neighbourhood prompts unedited, then at every commit from
    its own on; the immediate bleed (own commit − unedited) and the later erosion (last − own)."""
    from nmkevc.evaluation.metrics import evaluate_requests

    base, after = commits[0], commits[1:]
    scores: dict[tuple[int, int], float] = {}
    for t, cid in enumerate([base, *after]):
        state = repo.load_model(cid)
        for b in range(len(after) if t == 0 else t):
            report = evaluate_requests(state.model, state.tokenizer, cases[b * batch:(b + 1) * batch])
            scores[(b, t)] = report.specificity
    out = []
    for b in range(len(after)):
        own, last = scores[(b, b + 1)], scores[(b, len(after))]
        out.append({"batch": b + 1, "unedited": round(scores[(b, 0)], 4),
                    "at_commit": {str((t) * batch): round(scores[(b, t)], 4) for t in range(b + 1, len(after) + 1)},
                    "own_edit": round(own - scores[(b, 0)], 4), "later_edits": round(last - own, 4)})
    return out


def neighbours_only(cases: list) -> list:
    """The cases with their paraphrases dropped: only the neighbourhood prompts (and the rewrite
    prompt, which the evaluation always scores) are read."""
    from dataclasses import replace

    return [replace(c, request=replace(c.request, paraphrases=())) for c in cases]


def specificity_by_neighbour(repo, cases: list, states: dict[str, tuple[str, int]], base: str) -> dict:
    """Per method (its final commit and edits T), the specificity of the first T facts'
    neighbourhood prompts by kind, on that state and on the unedited one (`base`)."""
    from nmkevc.evaluation.metrics import EvalReport, evaluate_requests
    from nmkevc.evaluation.neighbours import neighbour_kinds, specificity_by_kind

    probes = neighbours_only(cases[:max(t for _, t in states.values())])

    def score(cid: str) -> EvalReport:
        state = repo.load_model(cid)
        return evaluate_requests(state.model, state.tokenizer, probes)

    unedited = score(base)
    out = {}
    for method, (cid, t) in states.items():
        kinds = neighbour_kinds(cases[:t], cases[:t])
        edited = score(cid)
        out[method] = {"edits": t, "commit": cid,
                       "unedited": specificity_by_kind(EvalReport(unedited.records[:t]), kinds),
                       "edited": specificity_by_kind(EvalReport(edited.records[:t]), kinds)}
        print(method, json.dumps(out[method]), flush=True)
    return out


def main() -> None:
    from nmkevc.threads import choose_wait

    choose_wait()  # before torch loads: nmkevc.threads, as the nmkevc command does
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", required=True, help="The lifelong run's repository (OUT/repo).")
    ap.add_argument("--results", required=True, help="The results folder (results.json; the output goes there).")
    ap.add_argument("--methods", default=None, help="Comma-separated methods of results.json (default: all).")
    ap.add_argument("--by-neighbour", action="store_true",
                    help="Split each method's last T by what the history did to each neighbour's subject.")
    args = ap.parse_args()
    from nmkevc import Repository
    from nmkevc.porcelain.datasets import eval_cases

    results_dir = Path(args.results)
    res = json.loads((results_dir / "results.json").read_text())
    info, batch = res["info"], res["batch_size"]
    cases = eval_cases(info["dataset"], res["edits"], seed=info["seed"], neighbours=info["neighbours"],
                       split=info["split"])
    repo = Repository.open(args.repo)
    branches = repo.plumbing.branches()
    methods = args.methods.split(",") if args.methods else list(res["methods"])
    # each method's branch, and the edits it was last fully evaluated at
    runs = {}
    for method in methods:
        branch = res["branches"].get(method)
        if branch not in branches:
            print(f"{method}: branch {branch} is not in {args.repo}; skipped")
            continue
        # --by-neighbour reads the last fully evaluated T; by batch, every batch done
        done = max(p["edits"] for p in res["points"]
                   if p["method"] == method and (p.get("specificity") is not None or not args.by_neighbour))
        runs[method] = (batch_commits(repo.plumbing, branches[branch], done // batch), done)
    if not runs:
        raise SystemExit("error: no method of results.json has its branch in the repository")
    name = "specificity_by_neighbour.json" if args.by_neighbour else "specificity_by_batch.json"
    out_path = results_dir / name
    data = json.loads(out_path.read_text()) if out_path.exists() else {"methods": {}}
    if args.by_neighbour:
        states = {m: (commits[-1], done) for m, (commits, done) in runs.items()}
        base = next(iter(runs.values()))[0][0]
        data["methods"].update(specificity_by_neighbour(repo, cases, states, base))
        out_path.write_text(json.dumps(data, indent=1) + "\n")
        return
    for method, (commits, _) in runs.items():
        data["methods"][method] = {"batches": specificity_by_batch(repo, cases, batch, commits)}
        out_path.write_text(json.dumps(data, indent=1) + "\n")
        print(method, json.dumps(data["methods"][method]))


if __name__ == "__main__":
    main()
