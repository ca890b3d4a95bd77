"""How long a one-fact edit's maths take under each way OpenMP's threads may wait for work.

torch's OpenMP threads either spin between parallel regions (fast to wake, but a spinning
thread takes a core from any other process) or sleep (`OMP_WAIT_POLICY=PASSIVE`: every region
pays a wake-up). Step 1 and the attribution's exponentials run many small parallel regions, so
the choice matters both ways. This measures, on the real embedded model, Step 1 for one fact
(a fixed number of Adam steps) and NMKE's attribution for it, in a fresh process per setting
(the runtime reads the variables when torch loads), with the cores free and with two busy
processes beside it. It writes docs/figures/wait_policy.json; `nmkevc`'s choice
(`nmkevc.threads.choose_wait`) is read from it in docs/method.md, "Threads".

    python benchmarks/wait_policy.py [--repeats 2] [--steps 10]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "figures" / "wait_policy.json"

#: name → the environment a setting adds (a fresh process each; nothing else set)
SETTINGS = {
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "bounded spin": {"GOMP_SPINCOUNT": "30000"},
    "active": {"OMP_WAIT_POLICY": "ACTIVE"},
}


def child(steps: int) -> None:
    """Time Step 1 (fixed steps) and the attribution of one fact; print one JSON line."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import editing

    from nmkevc.editing.attribution import attribution_scores
    from nmkevc.editing.context import generate_context_templates
    from nmkevc.editing.hooks import frozen_eval
    from nmkevc.editing.methods.nmke import NmkeHparams
    from nmkevc.editing.tokens import templated
    from nmkevc.editing.zopt import optimise_z
    from nmkevc.models.embedded import embedded_model_dir
    from nmkevc.models.loading import load_model, load_tokenizer
    from nmkevc.models.tokens import encode

    model_dir = embedded_model_dir()
    model, adapter = load_model(model_dir)
    tokenizer = load_tokenizer(model_dir)
    reqs = editing.requests(1)
    templates = generate_context_templates(model, tokenizer)
    hp = NmkeHparams(z_steps=steps, z_stop_loss=0.0, z_stop_top1=0)  # every step runs
    layers = adapter.edit_layers(None, adapter.num_layers(model))
    batch = encode(tokenizer, *templated(reqs, templates), start=hp.prompt_start)
    with frozen_eval(model):
        optimise_z(model, tokenizer, adapter, reqs, templates, layers[-1], hp)  # warm-up
        t0 = time.perf_counter()
        optimise_z(model, tokenizer, adapter, reqs, templates, layers[-1], hp)
        z = time.perf_counter() - t0
        t0 = time.perf_counter()
        attribution_scores(model, adapter, batch, layers)
        attribution = time.perf_counter() - t0
    print(json.dumps({"z": round(z, 3), "attribution": round(attribution, 3)}))


def busy(n: int) -> list[subprocess.Popen]:
    """n processes that keep a core each busy (plain Python loops: no threads, no torch)."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def measure(setting: str, steps: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(SETTINGS[setting])
    out = subprocess.run([sys.executable, __file__, "--child", "--steps", str(steps)], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    if args.child:
        child(args.steps)
        return
    rows = []
    for neighbours in (0, 2):
        hogs = busy(neighbours)
        try:
            time.sleep(1.0)
            for r in range(args.repeats):
                for setting in SETTINGS:  # interleaved, so drift in the machine hits every setting alike
                    load = round(os.getloadavg()[0], 2)
                    got = measure(setting, args.steps)
                    rows.append({"setting": setting, "busy_neighbours": neighbours, "repeat": r,
                                 "load_before": load, **got})
                    print(f"{setting:13s} busy {neighbours}  z {got['z']:6.2f} s  attribution "
                          f"{got['attribution']:6.2f} s  (load {load})", flush=True)
        finally:
            for h in hogs:
                h.kill()
    import torch

    data = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "steps": args.steps, "settings": SETTINGS, "rows": rows,
        "best": summary(rows),
    }
    OUT.write_text(json.dumps(data, indent=1) + "\n")
    print(json.dumps(data["best"], indent=1))


def summary(rows: list[dict]) -> dict:
    """Per condition and setting: the fastest repeat's z + attribution (seconds)."""
    out: dict = {}
    for r in rows:
        key = f"busy {r['busy_neighbours']}"
        total = round(r["z"] + r["attribution"], 3)
        cur = out.setdefault(key, {}).get(r["setting"])
        out[key][r["setting"]] = total if cur is None else min(cur, total)
    return out


if __name__ == "__main__":
    main()
