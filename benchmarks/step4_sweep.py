"""Step-4 sweeps on the embedded SmolLM2-135M-Instruct: the shared measurement of
benchmarks/ridge.py (λ, the masked-update form, MEMIT's λ0) and benchmarks/nullspace.py
(which directions count as the preserved keys' null space); a configuration may set any Step-4
option (the relation guard runs as `compute_edit` runs it).

Step 1 (z) and Steps 2-3 (NMKE's masks) depend on none of these settings, so one batch of dev
facts runs them once, and every configuration repeats only Step 4 from the same z and masks
(exactly what `compute_edit` would do for that configuration), is scored, and is undone. Only
the countryinfo DEV split is used: the test split is kept for reported results.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


def summary(report) -> dict:
    s = report.summary()
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in s.items()}


def _save_cache(path: Path, zres, masks: dict, mask_info: dict, times: tuple) -> None:
    """Steps 1-3's results as safetensors + JSON metadata (never pickle: the file is read back)."""
    import torch
    from safetensors.torch import save_file

    tensors = {"z": zres.z, "h": zres.h, "delta": zres.delta}
    tensors.update({f"mask.{layer}": m.to(torch.uint8) for layer, m in masks.items()})
    meta = {"nll": zres.nll, "kl": zres.kl, "steps": zres.steps, "times": list(times),
            "mask_info": {str(k): v for k, v in mask_info.items()}}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"json": json.dumps(meta)})


def _load_cache(path: Path):
    from safetensors import safe_open

    from nmkevc.editing.zopt import ZResult

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["json"])
        t = {k: f.get_tensor(k) for k in f.keys()}
    zres = ZResult(z=t["z"], h=t["h"], delta=t["delta"], nll=meta["nll"], kl=meta["kl"], steps=meta["steps"])
    masks = {int(k.split(".", 1)[1]): v.bool() for k, v in t.items() if k.startswith("mask.")}
    mask_info = {int(k): v for k, v in meta["mask_info"].items()}
    return zres, masks, mask_info, tuple(meta["times"])


def measure(n: int, seed: int, offset: int, configs: list[dict], command: str, cache: Path | None = None,
            extra: Callable[..., Callable[[dict], dict]] | None = None) -> dict:
    """One batch of `n` dev facts (from `offset`): Steps 1-3 once, then Step 4 per configuration.

    `extra(model=, tokenizer=, bench=, base=, layers=, adapter=)`, when given, is called once
    before the sweep and returns a function of the edited weights {layer: (W, W0)} that adds
    figures to each configuration's record (e.g. perplexity and disturbance)."""
    import torch

    from nmkevc import Repository
    from nmkevc.editing import EditHparams
    from nmkevc.editing.covariance import nullspace_projector
    from nmkevc.editing.engine import plan_edit, relation_guard, step1_targets, step2_3_masks, step4_update
    from nmkevc.editing.hooks import frozen_eval
    from nmkevc.editing.tokens import templated
    from nmkevc.evaluation.metrics import evaluate_requests
    from nmkevc.models.tokens import encode
    from nmkevc.porcelain.datasets import eval_cases
    from nmkevc.workbench.statistics import (
        DEFAULT_STATS_TOKENS,
        context_templates,
        second_moments,
        templates_key,
    )

    load0 = os.getloadavg()[0]
    t_start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        repo = Repository.init(Path(tmp) / "repo")
        plumbing = repo.plumbing
        base = plumbing.commit(plumbing.resolve("HEAD")).base
        state = repo.load_model()
        model, tok = state.model, state.tokenizer
        cases = eval_cases("countryinfo", n=offset + n, seed=seed, split="dev")[offset:]
        requests = [c.request for c in cases]
        hp0 = EditHparams()
        plan = plan_edit(model, requests, hp0, ["{}"])
        layers = plan.layers
        sigmas, _ = second_moments(repo.workbench, base, layers, repo.workbench.corpus(), DEFAULT_STATS_TOKENS)
        templates = context_templates(repo.workbench, templates_key(base, hp0))
        plan = plan_edit(model, requests, hp0, templates)
        projections: dict = {}  # rule → ({layer: P}, {layer: (directions kept, their share of trace Σ)})

        def projectors_for(rule):
            if rule not in projections:
                pk = {layer: nullspace_projector(s, rule) for layer, s in sigmas.items()}
                projections[rule] = ({k: p for k, (p, _) in pk.items()}, {
                    k: (n, round(float(torch.trace(pk[k][0].double() @ sigmas[k].double())
                                       / torch.trace(sigmas[k].double())), 4)) for k, (_, n) in pk.items()})
            return projections[rule]

        unedited = summary(evaluate_requests(model, tok, cases))
        figures = None if extra is None else extra(model=model, tokenizer=tok, bench=repo.workbench, base=base,
                                                   layers=layers, adapter=plan.adapter)
        quiet = lambda *_: None  # noqa: E731
        t0 = time.time()
        batch = encode(tok, *templated(plan.requests, plan.templates), start=hp0.prompt_start)
        if cache is not None and cache.exists():  # a rerun of the sweep reuses z and the masks
            zres, masks, mask_info, (t0, t1, t2) = _load_cache(cache)
        else:
            with frozen_eval(model):
                zres = step1_targets(model, tok, plan, hp0, quiet)
                t1 = time.time()
                masks, mask_info = step2_3_masks(model, plan, batch, hp0, quiet)
            t2 = time.time()
            if cache is not None:
                _save_cache(cache, zres, masks, mask_info, (t0, t1, t2))
        weights = [plan.adapter.weight(model, layer) for layer in layers]
        originals = [w.detach().clone() for w in weights]
        runs = []
        for cfg in configs:
            hp = EditHparams(**cfg)
            cplan = plan_edit(model, requests, hp, templates)
            projectors, kept = projectors_for(hp.nullspace) if cplan.method.uses_projector else (None, {})
            try:
                with frozen_eval(model):
                    guard = relation_guard(model, tok, cplan, hp)[0] if hp.relation_guard else None
                    steps, _, h_final, _ = step4_update(
                        model, cplan, batch, zres.z, hp, masks if cplan.method.masks_neurons else None,
                        projectors if cplan.method.uses_projector else None, None,
                        sigmas if cplan.method.needs_second_moment(hp) else None, quiet, guard)
                scores = summary(evaluate_requests(model, tok, cases))
                if figures is not None:
                    scores.update(figures({layer: (w.detach(), orig)
                                           for layer, w, orig in zip(layers, weights, originals, strict=True)}))
            finally:
                with torch.no_grad():
                    for w, orig in zip(weights, originals, strict=True):
                        w.copy_(orig)
            left = ((zres.z - h_final).norm(dim=0) / zres.delta.norm(dim=0).clamp_min(1e-12)).mean()
            run = {
                **cfg,
                "layers": [{"layer": st.layer, "neurons": int(st.idx.numel()),
                            **({"nullspace_kept": kept[st.layer][0], "nullspace_trace_share": kept[st.layer][1]}
                               if cplan.method.uses_projector else {}),
                            **{k: round(v, 4) for k, v in st.info.items() if isinstance(v, float)}}
                           for st in steps],
                "written_fraction_mean": round(sum(st.info["written_fraction"] for st in steps) / len(steps), 4),
                "residual_left": round(float(left), 4),
                **scores,
            }
            runs.append(run)
            print(json.dumps({k: run[k] for k in cfg} | {
                "wf": run["written_fraction_mean"], "eff": run["efficacy"], "gen": run["generalization"],
                "spec": run["specificity"]} | {k: v for k, v in scores.items() if k.startswith(("ppl", "dist"))}),
                file=sys.stderr, flush=True)
        kept0 = projectors_for(hp0.nullspace)[1]
    return {
        "model": "SmolLM2-135M-Instruct (embedded)",
        "facts": {"set": "countryinfo", "split": "dev", "n": n, "seed": seed, "offset": offset,
                  "subjects": [r.subject for r in requests]},
        "layers": layers,
        "nullspace_kept": {str(k): v[0] for k, v in kept0.items()},
        "d_ff": plan.d_ff,
        "mask_neurons": {str(k): int(v["kept"]) for k, v in mask_info.items()},
        "z_steps": zres.steps,
        "unedited": unedited,
        "runs": runs,
        "seconds": {"z": round(t1 - t0, 1), "attribution": round(t2 - t1, 1), "total": round(time.time() - t_start, 1)},
        "threads": torch.get_num_threads(),
        "load_before": round(load0, 2),
        "load_after": round(os.getloadavg()[0], 2),
        "machine": platform.machine(),
        "command": command,
    }


def merge_batch(path: Path, batch: dict) -> dict:
    """`batch` added to the sweep file at `path` (a batch of the same facts is replaced)."""
    data = json.loads(path.read_text()) if path.exists() else {"batches": []}

    def key(b):
        return b["facts"]["seed"], b["facts"]["offset"], b["facts"]["n"]

    data["batches"] = [b for b in data["batches"] if key(b) != key(batch)] + [batch]
    data["batches"].sort(key=lambda b: (b["facts"]["seed"], b["facts"]["offset"]))
    return data


@dataclass(frozen=True)
class SweepScript:
    """What one sweep script adds to the shared measurement, so that both scripts share one
    command line and one measure → merge → write → table flow."""

    script: str  # its path from the repository root, for the recorded command
    default_n: int
    out: Path  # its JSON file; the doc's table is regenerated when the run writes here
    doc: Path
    begin: str  # the doc's generated-table markers
    end: str
    configurations: Callable[[], list[dict]]
    table: Callable[[dict], str]
    extra: Callable[..., Callable[[dict], dict]] | None = None  # as `measure`'s
    finish: Callable[[dict], None] | None = None  # adds figures derived from all batches to the data

    def write_markdown(self, data: dict) -> None:
        from nmkevc.evaluation.lifelong_report import replace_block

        self.doc.write_text(replace_block(self.doc.read_text(), self.begin, self.end, self.table(data)))


def cli(sweep: SweepScript, description: str, argv: list[str] | None = None) -> None:
    """The sweep scripts' shared command line: measure one batch and merge it into --out, or
    (--markdown) only regenerate the doc's table from --out."""
    from nmkevc.threads import choose_wait

    choose_wait()  # before torch loads: nmkevc.threads, as the nmkevc command does
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--n", type=int, default=sweep.default_n, help="dev facts in the batch")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--offset", type=int, default=0,
                    help="skip this many dev facts (another batch); batches are merged into --out")
    ap.add_argument("--out", type=Path, default=sweep.out)
    ap.add_argument("--cache", type=Path, default=None,
                    help="keep Step 1-3 results here (a file) and reuse them on a rerun")
    ap.add_argument("--markdown", action="store_true", help=f"only regenerate the table in {sweep.doc.name}")
    args = ap.parse_args(argv)
    if args.markdown:
        sweep.write_markdown(json.loads(args.out.read_text()))
        return
    command = f"python {sweep.script} --n {args.n} --seed {args.seed} --offset {args.offset}"
    batch = measure(args.n, args.seed, args.offset, sweep.configurations(), command, args.cache, sweep.extra)
    batch["date"] = datetime.date.today().isoformat()
    data = merge_batch(args.out, batch)
    if sweep.finish is not None:
        sweep.finish(data)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    if args.out.resolve() == sweep.out.resolve():
        sweep.write_markdown(data)
    print(sweep.table(data))
