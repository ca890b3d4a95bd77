"""Sharing and serving on the embedded SmolLM2-135M-Instruct: what moves, and the adapter.

Builds a repository with two NMKE edits (3 facts), then measures: clone / push / fetch
(objects and bytes moved, seconds; a repeated push moves nothing), the statistics cache
that `--with-stats` adds, a bundle, and the PEFT export (rank, bytes, and the largest
logit difference between PeftModel(base, adapter) and the merged export in float32, and
the reported error of a truncated adapter). Writes benchmarks/sharing.json.

    python benchmarks/sharing.py [--out benchmarks/sharing.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

from nmkevc import EditRequest, Repository


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, round(time.perf_counter() - t, 3)


def main() -> None:
    from nmkevc.threads import choose_wait

    choose_wait()  # before torch loads: nmkevc.threads, as the nmkevc command does
    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(Path(__file__).with_name("sharing.json")))
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nmkevc-sharing-"))
    results: dict = {"machine": {"cpus": torch.get_num_threads(), "python": platform.python_version(),
                                 "torch": torch.__version__}}

    origin = Repository.init(work / "origin")
    facts = [
        EditRequest(subject="France", prompt="The capital of {} is", target_new="Rome", target_true="Paris"),
        EditRequest(subject="Japan", prompt="The currency of {} is the", target_new="euro", target_true="yen"),
    ]
    _, t_edit = timed(lambda: origin.edit(facts))
    results["setup_edit_seconds_under_shared_load"] = t_edit  # setup, not an editing benchmark

    # clone, then an edit there, pushed back: only the new commit and its delta travel
    rep, t = timed(lambda: Repository.clone(str(work / "origin"), work / "alice"))
    results["clone"] = {"objects": rep.transfer.objects, "bytes": rep.transfer.bytes, "seconds": t}
    alice = Repository.open(work / "alice")
    alice.edit(EditRequest(subject="Danielle Darrieux", prompt="The mother tongue of {} is",
                           target_new="English", target_true="French"))
    rep, t = timed(lambda: alice.push())
    results["push_one_edit"] = {"objects": rep.objects, "bytes": rep.bytes, "seconds": t}
    rep, t = timed(lambda: alice.push())
    results["push_again"] = {"objects": rep.objects, "bytes": rep.bytes, "seconds": t}
    # a fresh bare remote: the whole history, with and without the statistics cache
    alice.add_remote("bare", str(work / "bare"))
    rep, t = timed(lambda: alice.push("bare"))
    results["push_to_empty_remote"] = {"objects": rep.objects, "bytes": rep.bytes, "seconds": t}
    alice.add_remote("bare-stats", str(work / "bare-stats"))
    rep, t = timed(lambda: alice.push("bare-stats", with_stats=True))
    results["push_to_empty_remote_with_stats"] = {"objects": rep.objects, "bytes": rep.bytes, "seconds": t}
    bob_fetch, t = timed(lambda: Repository.clone(str(work / "bare"), work / "bob").transfer)
    results["clone_of_bare"] = {"objects": bob_fetch.objects, "bytes": bob_fetch.bytes, "seconds": t}

    rep, t = timed(lambda: alice.bundle_create(work / "x.bundle", ["main"]))
    results["bundle"] = {"objects": rep.objects, "file_bytes": (work / "x.bundle").stat().st_size, "seconds": t}

    # PEFT adapter vs merged export
    rep, t = timed(lambda: alice.export_peft("HEAD", work / "adapter"))
    results["peft_export"] = {"rank": rep.rank, "layers": rep.layers, "facts": rep.facts,
                              "adapter_bytes": rep.bytes_written, "seconds": t}
    full, t = timed(lambda: alice.export("HEAD", work / "merged"))
    results["merged_export"] = {"bytes": full.bytes_written, "seconds": t}
    trunc = alice.export_peft("HEAD", work / "adapter-r1", rank=1)
    results["peft_export_rank1"] = {"max_relative_error": trunc.max_error, "errors": trunc.errors}

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_dir = json.loads((work / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"]
    tok = AutoTokenizer.from_pretrained(work / "merged")
    prompts = ["The capital of France is", "The currency of Japan is the",
               "The mother tongue of Danielle Darrieux is", "The capital of Germany is"]
    merged = AutoModelForCausalLM.from_pretrained(work / "merged", dtype=torch.float32).eval()
    peft_model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32), work / "adapter").eval()
    diffs = []
    tops = []
    with torch.no_grad():
        for p in prompts:
            ids = tok(p, return_tensors="pt").input_ids
            a, b = merged(input_ids=ids).logits, peft_model(input_ids=ids).logits
            diffs.append(float((a - b).abs().max()))
            tops.append([tok.decode(int(a[0, -1].argmax())), tok.decode(int(b[0, -1].argmax()))])
    results["peft_vs_merged"] = {"max_abs_logit_diff": max(diffs), "per_prompt": diffs,
                                 "top_token_merged_vs_peft": tops}
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
