"""`edit` and `show` report, per layer, the share of its residual each layer wrote
(‖ΔW k‖ / ‖r‖, stored with the delta); deltas recorded before it show without it."""

import json
import re

from random_deltas import random_delta, request

from nmkevc import Repository
from nmkevc.facts import EditRequest


def test_edit_and_show_report_the_written_fraction(repo, run):
    code, out, err = run(repo, "edit", "-s", "France", "-p", "The capital of {} is", "-t", "Rome",
                         "--layers", "1-2", "--stats-tokens", "400")
    assert code == 0, err
    edit_lines = [x for x in out.splitlines() if x.strip().startswith("layer")]
    assert len(edit_lines) == 2 and all(re.search(r"wrote \d+% of its share", x) for x in edit_lines)
    code, out, _ = run(repo, "show", "--json")
    weights = json.loads(out)["weights"]
    fractions = [w["info"]["written_fraction"] for w in weights]
    assert len(fractions) == 2 and all(isinstance(f, float) and f > 0 for f in fractions)
    assert all("ridge" in w["info"] for w in weights)
    code, out, _ = run(repo, "show")
    shown = [x for x in out.splitlines() if x.strip().startswith("layer")]
    for line, f in zip(shown, fractions, strict=True):  # the same figure as stored
        assert f"wrote {f:.0%} of its share" in line
    for line, f in zip(edit_lines, fractions, strict=True):
        assert f"wrote {f:.0%} of its share" in line


def test_show_a_delta_without_written_fraction(repo, run):
    old = Repository.open(repo.dir).commit_delta(
        random_delta(repo, seed=1, layers=(1,)), "teach France",
        [EditRequest.from_json(request("France", "Rome"))])
    code, out, _ = run(repo, "show", old[:10])
    assert code == 0 and "neurons" in out and "wrote" not in out
