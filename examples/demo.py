"""The main job, end to end on the embedded SmolLM2-135M-Instruct (`make demo`).

Builds a repository in ./demo-repo (fresh each run), teaches the model counterfactual
facts with NMKE on two branches, merges them (the merge re-checks every edit on the
merged model), blames, evaluates, reverts exactly, and exports a Hugging Face model
directory that transformers loads — printing every command as a user would type it.
"""

from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path

from nmkevc.cli.app import main as nmkevc

ROOT = Path(__file__).resolve().parent.parent / "demo-repo"


def run(*args: str, check: bool = True) -> int:
    print(f"\n$ nmkevc {' '.join(shlex.quote(a) for a in args)}", flush=True)
    code = nmkevc(["-C", str(ROOT), *args])
    if check and code != 0:
        sys.exit(f"demo: command failed with exit code {code}")
    return code


def main() -> None:
    if ROOT.exists():
        shutil.rmtree(ROOT)
    ROOT.mkdir()
    run("init")
    run("ask", "The capital of France is", "-k", "3")
    run("edit", "-s", "France", "-p", "The capital of {} is", "-t", "Rome", "--target-true", "Paris",
        "--paraphrase", "France's capital city is")
    run("ask", "The capital of France is", "-k", "3")
    run("ask", "The capital of Germany is", "-k", "3")
    run("switch", "-c", "languages")
    run("edit", "-s", "Danielle Darrieux", "-p", "The mother tongue of {} is", "-t", "English",
        "--target-true", "French")
    run("switch", "main")
    run("edit", "-s", "Japan", "-p", "The currency of {} is the", "-t", "euro", "--target-true", "yen")
    run("merge", "languages")
    run("log", "--graph", "--oneline")
    run("show", "HEAD~1")
    run("blame", "The capital of France is")
    run("eval")
    run("tag", "three-facts")
    run("revert", "HEAD~1")
    run("diff", "three-facts", "HEAD")
    run("ask", "The currency of Japan is the", "-k", "3")
    out = ROOT / "exported"
    run("export", "three-facts", str(out))
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"\n>>> AutoModelForCausalLM.from_pretrained({str(out)!r})")
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        top = model(**ids).logits[0, -1].softmax(-1).topk(3)
    print("    " + ", ".join(f"{tok.decode(int(i))!r} {float(p):.2%}" for p, i in zip(top.values, top.indices)))
    run("fsck")
    run("status")
    print(f"\nDemo repository left in {ROOT}")


if __name__ == "__main__":
    main()
