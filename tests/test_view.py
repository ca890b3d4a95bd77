"""`nmkevc view`: the page's data against the repository (ids, parents, lanes, neuron maps, merge
overlap, health), escaping of hostile text, the CLI's exits, and (where Chromium is installed)
that the page loads in a real browser without console errors."""

from __future__ import annotations

import base64
import json
import re
import shutil
import sys
from pathlib import Path

import pytest
from random_deltas import random_delta, request

from nmkevc import EditRequest
from nmkevc.errors import MergeConflictError
from nmkevc.porcelain.view import read_data

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

HOSTILE = "teach </script><script>alert('x')</script> & <b>bold</b> \u2028"


def _commit(repo, seed: int, subject: str, target: str | None = None, held: bool = True,
            message: str | None = None, health: float | None = None) -> str:
    """A random delta with a recorded self-check and health figures, as an edit records them."""
    target = target or f"T{seed}"
    req = request(subject, target)
    info = {"evaluation": {"requests": [{"text": f"The capital of {subject} is", "target_new": target,
                                         "efficacy": held, "p_before": 0.01, "p_after": 0.9 if held else 0.02}]},
            "editor": {"method": "nmke", "layers": [1, 2], "n_requests": 1, "projector": "given"}}
    if health is not None:
        info["health"] = {"norm_growth": health / 10, "disturbance": health / 2, "disturbance_cumulative": health,
                          "layers": {"1": {"norm_growth": health / 10, "disturbance_cumulative": health}}}
    return repo.commit_delta(random_delta(repo, seed=seed), message or f"teach {subject}",
                             [EditRequest.from_json(req)], method={"name": "nmke", "hparams": {"layers": [1, 2]}},
                             info=info)


@pytest.fixture
def history(repo):
    """main: c1, c4 (conflicts with side on Portugal); side (from c1): c2, c3 (self-check failed)."""
    ids = {"c1": _commit(repo, 1, "France", health=0.01)}
    repo.branch("side")
    repo.switch("side")
    ids["c2"] = _commit(repo, 2, "Spain", health=0.02)
    ids["c3"] = _commit(repo, 3, "Portugal", target="Oslo", held=False, message=HOSTILE, health=0.03)
    repo.switch("main")
    ids["c4"] = _commit(repo, 4, "Portugal", target="Lima", health=0.04)
    return ids


def _levels(b64: str) -> list[int]:
    return list(base64.b64decode(b64))


def test_record_matches_repository(repo, history):
    from nmkevc.porcelain.describe import NEURON_BINS

    repo.merge("side", strategy="ours")
    repo.revert(history["c1"])
    rep = repo.view("HEAD")
    data = rep.data
    log = repo.log_graph("HEAD")
    assert [c["id"] for c in data["commits"]] == [e.id for e, _ in log]
    row_of = {c["id"]: i for i, c in enumerate(data["commits"])}
    for c, (e, row) in zip(data["commits"], log):
        assert c["parents"] == e.parents and c["message"] == e.message and c["refs"] == e.refs
        assert c["column"] == row.column == row.prefix.index("*") // 2  # log --graph's lanes
        assert c["lanes"] == [row_of[x] for x in row.lanes] and len(row.lanes) == row.prefix.count("|") + 1
        assert c["checks_held"] == e.checks_held
        commit = repo.commit(e.id)
        assert c["health"] == commit.info.get("health")
        if commit.delta is None:
            assert c["layers"] == []
            continue
        delta = repo.plumbing.delta(commit.delta)
        assert [w["layer"] for w in c["layers"]] == [w.layer for w in delta.weights]
        for rec, w in zip(c["layers"], delta.weights):
            n = min(NEURON_BINS, w.d_ff)
            written = {int(j) * n // w.d_ff for j in w.idx}
            levels = _levels(rec["levels"])
            assert rec["bins"] == len(levels) == n and rec["neurons"] == int(w.idx.numel())
            assert {b for b, v in enumerate(levels) if v} == written
            mass = w.neuron_mass()
            bins = [0.0] * n
            for j in range(w.d_ff):
                bins[j * n // w.d_ff] += float(mass[j])
            top = max(bins) ** 0.5
            assert rec["scale"] == pytest.approx(top, rel=1e-5)
            assert max(levels) == 255
            for b in range(n):
                if bins[b] > 0:
                    assert levels[b] == max(1, round(255 * bins[b] ** 0.5 / top))
    by_id = {c["id"]: c for c in data["commits"]}
    cancelled = {x: [c.id for c, _ in log if x in c.cancels] for x in by_id}
    assert {x: c["cancelled_by"] for x, c in by_id.items()} == cancelled and cancelled[history["c1"]]
    assert by_id[history["c3"]]["checks_held"] is False and by_id[history["c1"]]["checks_held"] is True
    assert data["protocols"] == [{"name": "nmke", "hparams": {"layers": [1, 2]}}]
    assert {by_id[history[k]]["method"] for k in history} == {0}
    # the drift line: HEAD's first-parent line, every commit on it that recorded health
    (line,) = data["drift"]
    fp = []
    cid = repo.resolve("HEAD")
    while cid:
        fp.append(cid)
        ps = repo.commit(cid).parents
        cid = ps[0] if ps else None
    fp.reverse()
    want = [(c, i) for i, c in enumerate(fp) if repo.commit(c).info.get("health")]
    assert [(p["commit"], p["step"]) for p in line["points"]] == want
    for p in line["points"]:
        h = repo.commit(p["commit"]).info["health"]
        keys = ("norm_growth", "disturbance", "disturbance_cumulative")
        assert {k: v for k, v in p.items() if k in keys} == {k: h[k] for k in keys if k in h}


def test_compare_scores_what_merge_scores(repo, history):
    data = repo.view("main...side", mask_threshold=0.3).data
    k = data["compare"]
    with pytest.raises(MergeConflictError) as err:
        repo.merge("side", mask_threshold=0.3, functional=False)
    report = err.value.report
    assert k["mask_scores"] == report["mask_scores"] and k["mask_scores"]
    assert k["fact_conflicts"] == report["fact_conflicts"] and len(k["fact_conflicts"]) == 1
    assert k["ours_side"] == report["ours_side"] == [history["c4"]]
    assert k["theirs_side"] == report["theirs_side"] == [history["c2"], history["c3"]] or \
        sorted(k["theirs_side"]) == sorted([history["c2"], history["c3"]])
    assert k["threshold"] == 0.3 and k["conflicted"] is True and k["status"] == "merge"
    assert k["merge_bases"] == [history["c1"]]
    # the graph of A...B: both sides since the merge base, and the base itself
    assert {c["id"] for c in data["commits"]} == set(history.values())
    # the maps: shared bins where both sides touch a neuron of the bin
    plan_a = repo.plumbing.plan_of(k["ours_side"])
    plan_b = repo.plumbing.plan_of(k["theirs_side"])
    for m in k["maps"]:
        wa = plan_a[m["weight"]][0][1]
        on_a = {int(j) for j in wa.idx}
        on_b = {int(j) for _, w in plan_b[m["weight"]] for j in w.idx}
        n, d_ff = m["a"]["bins"], m["d_ff"]
        assert m["shared_neurons"] == len(on_a & on_b) == next(
            s["shared"] for s in k["mask_scores"] if s["weight"] == m["weight"])
        assert {b for b, v in enumerate(_levels(m["shared"])) if v} == {j * n // d_ff for j in on_a & on_b}
        assert {b for b, v in enumerate(_levels(m["a"]["levels"])) if v} == {j * n // d_ff for j in on_a}


def test_range_and_page_escaping(repo, history, tmp_path):
    out = tmp_path / "v.html"
    rep = repo.view("main..side", out)
    assert {c["id"] for c in rep.data["commits"]} == {history["c2"], history["c3"]}
    page = out.read_text(encoding="utf-8")
    assert rep.bytes == len(page.encode("utf-8"))
    assert "alert" not in page and "<b>bold" not in page and "\u2028" not in page
    assert page.count("</script>") == 2  # the data element's and the program's, nothing from the record
    carried = read_data(page)
    assert carried == json.loads(json.dumps(rep.data))
    assert next(c["message"] for c in carried["commits"] if c["id"] == history["c3"]) == HOSTILE
    assert not re.search(r"(src|href)=\"(https?:)?//", page)  # nothing fetched


def test_log_and_show_json_carry_the_view(repo, history, run):
    code, out, _ = run(repo, "log", "--json")
    assert code == 0
    entries = json.loads(out)
    rows = repo.log_graph("HEAD")
    assert [(e["id"], e["graph"]["column"], e["graph"]["lanes"]) for e in entries] == \
        [(r.commit, r.column, list(r.lanes)) for _, r in rows]
    code, out, _ = run(repo, "show", "--json", history["c3"])
    shown = json.loads(out)
    assert code == 0 and shown["checks_held"] is False and shown["info"]["health"]["disturbance_cumulative"] == 0.03
    assert all(set(w["neuron_map"]) == {"bins", "scale", "levels"} for w in shown["weights"])


def test_cli(repo, history, run, tmp_path):
    out = tmp_path / "page.html"
    code, stdout, _ = run(repo, "view", "-o", str(out))
    assert code == 0 and out.exists() and "3 commit(s)" in stdout  # the root, c1, c4
    code, stdout, _ = run(repo, "view", "main...side", "-o", str(out), "--json")
    assert code == 0 and json.loads(stdout)["bytes"] == out.stat().st_size
    for args in (("nope",), ("main..nope",), ("main....side",), ("side..side",)):
        code, _, err = run(repo, "view", *args, "-o", str(tmp_path / "x.html"))
        assert code != 0 and err.startswith("error: ") and err.count("\n") == 1, (args, err)
    code, _, err = run(repo, "view", "-o", str(tmp_path / "missing" / "x.html"))
    assert code != 0 and err.startswith("error: cannot write") and err.count("\n") == 1
    code, _, err = run(repo, "view", "-o", str(tmp_path))
    assert code != 0 and err.count("\n") == 1
    code, _, err = run(repo, "view", "main...side", "--mask-threshold", "2", "-o", str(out))
    assert code == 2
    assert not (tmp_path / "x.html").exists()


@pytest.mark.skipif(not (shutil.which("chromium") or shutil.which("chromium-browser")),
                    reason="Chromium is not installed")
def test_page_loads_in_chromium(repo, history, tmp_path):
    from view_check import check_page

    repo.merge("side", strategy="ours")
    for spec, view in (("HEAD", f"history/{history['c3'][:12]}"), ("HEAD~1...side", "compare"), ("HEAD", "drift")):
        out = tmp_path / "page.html"
        repo.view(spec, out)
        result = check_page(out, tmp_path / "profile", view)
        assert result["rendered"] and not result["console_errors"], result
        if view.startswith("history"):  # the hostile message is on the page, as text
            assert "teach &lt;/script&gt;&lt;script&gt;alert('x')&lt;/script&gt; &amp; &lt;b&gt;bold" in result["dom"]
            assert "<b>bold" not in result["dom"]
