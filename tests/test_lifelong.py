"""A short run of the lifelong benchmark's code path (tiny T) so it cannot rot."""

import json

import pytest

from nmkevc.errors import NmkevcError
from nmkevc.evaluation.lifelong import LifelongRun, run_lifelong
from nmkevc.evaluation.lifelong_report import markdown_table, write_outputs
from nmkevc.evaluation.metrics import EvalCase
from nmkevc.facts import EditRequest


def test_lifelong_short_run(model_dirs, tmp_path):
    from nmkevc import Repository

    repo = Repository.init(tmp_path / "repo", base=str(model_dirs["llama"]))
    cases = [
        EvalCase(EditRequest("France", "The capital of {} is", "Rome", target_true="Paris",
                             paraphrases=("The capital city of France is",),
                             neighborhood=("The capital of Spain is",)), ("Madrid",)),
        EditRequest("Spain", "The capital of {} is", "Oslo", target_true="Madrid"),
        EditRequest("Italy", "The official language of {} is", "French", target_true="Italian"),
    ]
    lines = []
    run = run_lifelong(repo, cases, batch_size=2, methods=("nmke", "alphaedit", "memit"), log=lines.append,
                       hparams_overrides={"layers": [1, 2]}, fluency_prompts=2, fluency_tokens=6)
    assert [(p.method, p.edits) for p in run.points] == [
        ("nmke", 2), ("nmke", 3), ("alphaedit", 2), ("alphaedit", 3), ("memit", 2), ("memit", 3)]
    for p in run.points:
        assert 0 <= p.efficacy <= 1 and 0 <= p.retention <= 1 and p.perplexity > 1 and p.stored_bytes > 0
        assert p.fluency is not None and p.fluency >= 0 and p.eval_seconds > 0
    # the unedited model's references: scored on the same neighbourhood prompts, per case
    base = run.info["base_cases"]
    assert len(base["specificity"]) == 3 and base["specificity"][1:] == [None, None]  # only France has neighbours
    assert all(p.base_specificity == base["specificity"][0] for p in run.points)
    assert all(p.specificity_untouched is None for p in run.points)  # the cases do not say their neighbours
    assert run.info["base_fluency"] >= 0 and run.info["base_perplexity"] > 1
    assert run.info["fluency"]["prompts"] == ["The capital of France is", "The capital of Spain is"]
    assert {m: h["method"] for m, h in run.info["hparams"].items()} == {m: m for m in ("nmke", "alphaedit", "memit")}
    assert all(h["layers"] == [1, 2] for h in run.info["hparams"].values())
    nmke = [p for p in run.points if p.method == "nmke"]
    assert all(0 < p.mean_mask_fraction <= 1 for p in nmke)
    assert len(lines) == 6 and "3/3 edits" in lines[1] and "0 batch(es) left" in lines[-1]
    # every batch is a real commit on its own branch from the root
    for p in run.points:
        assert repo.commit(p.commit).kind == "edit"
    assert len([b for b in repo.branches() if b.startswith("lifelong-")]) == 3
    paths = write_outputs(run, tmp_path / "out")
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert len(data["points"]) == 6
    assert (tmp_path / "out" / "efficacy.png").stat().st_size > 1000 and len(paths) == 9
    assert (tmp_path / "out" / "table.md").read_text().count("\n") == 2 + 6
    assert len(markdown_table(run).splitlines()) == 2 + 6


def test_a_long_comparison_gets_lines_that_tell_apart_and_a_legend_beside_the_axes(tmp_path):
    """Twenty-six arms (the dev split's table): no two share colour and dash, and the legend goes
    beside the axes (the saved figure is wider than the axes alone) instead of over the curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from nmkevc.evaluation.lifelong import BatchPoint
    from nmkevc.evaluation.lifelong_report import LEGEND_INSIDE, _line_style

    styles = [_line_style(i, 26, plt) for i in range(26)]
    assert len({(tuple(c), ls) for c, ls in styles}) == 26
    assert [_line_style(i, 3, plt) for i in range(3)] == [("C0", "-"), ("C1", "-"), ("C2", "-")]

    def run(n):
        methods = [f"nmke:ridge=0.{i}" for i in range(n)]
        pts = [BatchPoint(m, e, seconds=1.0, stored_bytes=1, efficacy=0.9, generalization=0.8, specificity=0.7,
                          retention=0.9, perplexity=10.0, perplexity_change=0.01 * e / 100, mean_mask_fraction=0.5,
                          commit="c") for m in methods for e in (100, 200)]
        return LifelongRun(200, 100, methods, points=pts)

    widths = {}
    for n in (LEGEND_INSIDE, 26):
        out = tmp_path / f"{n}"
        write_outputs(run(n), out)
        widths[n] = Image.open(out / "perplexity_change.png").size[0]
    assert widths[26] > widths[LEGEND_INSIDE] + 100  # pixels: the legend column


class _Interrupting:
    """The facade, but the process "dies" at the n-th edit: before it commits, or just after."""

    def __init__(self, repo, at: int, after_commit: bool):
        self._repo, self._at, self._after, self.calls = repo, at, after_commit, 0

    def __getattr__(self, name):
        return getattr(self._repo, name)

    def edit(self, *a, **kw):
        self.calls += 1
        if self.calls == self._at and not self._after:
            raise KeyboardInterrupt
        out = self._repo.edit(*a, **kw)
        if self.calls == self._at:
            raise KeyboardInterrupt
        return out


def _cases():
    return [EditRequest(s, "The capital of {} is", t, target_true=tt)
            for s, t, tt in (("France", "Rome", "Paris"), ("Spain", "Oslo", "Madrid"),
                             ("Italy", "Lima", "Rome"), ("Peru", "Bern", "Lima"), ("Chile", "Kyiv", "Santiago"))]


def test_lifelong_resumes_from_its_checkpoint(model_dirs, tmp_path):
    import pytest

    from nmkevc import Repository

    for after_commit in (False, True):
        repo = Repository.init(tmp_path / f"repo-{after_commit}", base=str(model_dirs["llama"]))
        ckpt = tmp_path / f"ckpt-{after_commit}.json"
        kw = dict(batch_size=2, methods=("nmke", "memit"), log=lambda _: None, perplexity_every=0,
                  hparams_overrides={"layers": [1, 2]}, checkpoint=ckpt)
        with pytest.raises(KeyboardInterrupt):  # dies in memit's first batch
            run_lifelong(_Interrupting(repo, 4, after_commit), _cases(), **kw)
        saved = json.loads(ckpt.read_text())
        assert [(p["method"], p["edits"]) for p in saved["points"]] == [("nmke", 2), ("nmke", 4), ("nmke", 5)]
        run = run_lifelong(repo, _cases(), **kw)
        assert [(p.method, p.edits) for p in run.points] == [
            ("nmke", 2), ("nmke", 4), ("nmke", 5), ("memit", 2), ("memit", 4), ("memit", 5)]
        assert [p.commit for p in run.points[:3]] == [p["commit"] for p in saved["points"]]
        # memit's branch holds exactly its three batches: a batch committed but not
        # checkpointed was set aside and done again, never applied twice
        line, c = [], repo.resolve(run.branches["memit"])
        while repo.commit(c).parents:
            line.append(c)
            c = repo.commit(c).parents[0]
        assert len(line) == 3 and line[0] == run.points[-1].commit
        # a checkpoint of another run is refused, not silently mixed in
        with pytest.raises(Exception, match="another run"):
            run_lifelong(repo, _cases()[:4], **kw)


def test_lifelong_cli(model_dirs, tmp_path, capsys):
    from nmkevc import Repository
    from nmkevc.cli.app import main

    Repository.init(tmp_path / "repo", base=str(model_dirs["llama"]))
    facts = tmp_path / "facts.jsonl"
    facts.write_text("".join(json.dumps({
        "requested_rewrite": {"prompt": "The capital of {} is", "subject": s, "target_new": {"str": t},
                              "target_true": {"str": tt}},
        "paraphrase_prompts": [f"The capital city of {s} is"], "neighborhood_prompts": ["The capital of Peru is"],
    }) + "\n" for s, t, tt in (("France", "Rome", "Paris"), ("Spain", "Oslo", "Madrid"), ("Italy", "Lima", "Rome"))))
    args = ["-C", str(tmp_path / "repo"), "lifelong", "-d", str(facts), "-n", "3", "-b", "2",
            "--methods", "alphaedit", "--out", str(tmp_path / "out"), "--json"]
    assert main(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert [(p["method"], p["edits"]) for p in data["points"]] == [("alphaedit", 2), ("alphaedit", 3)]
    assert (tmp_path / "out" / "checkpoint.json").exists() and (tmp_path / "out" / "results.json").exists()
    # the same command again finds every batch done and changes nothing
    head = Repository.open(tmp_path / "repo").resolve("HEAD")
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["points"] == data["points"]
    assert Repository.open(tmp_path / "repo").resolve("HEAD") == head
    assert main(["-C", str(tmp_path / "repo"), "lifelong", "-d", str(facts), "-n", "9"]) == 2
    assert "asked for 9 edits" in capsys.readouterr().err
    assert main([*args[:-1], "--measure-every", "0"]) == 1
    assert "measuring every 0 batches: it must be at least 1" in capsys.readouterr().err


_OLD_FORMAT_KEYS = ("fluency", "base_specificity", "eval_seconds")


def test_lifelong_resumes_a_checkpoint_of_the_old_format(model_dirs, tmp_path):
    """A checkpoint written before fluency and the unedited references existed still loads
    (new fields None) and resumes; the base specificity of its points is filled in."""
    import pytest

    from nmkevc import Repository

    repo = Repository.init(tmp_path / "repo", base=str(model_dirs["llama"]))
    ckpt = tmp_path / "ckpt.json"
    cases = _cases_with_neighbours()[:4]
    kw = dict(batch_size=2, methods=("alphaedit",), log=lambda _: None, perplexity_every=0,
              hparams_overrides={"layers": [1, 2]}, checkpoint=ckpt, fluency_prompts=2, fluency_tokens=5)
    with pytest.raises(KeyboardInterrupt):
        run_lifelong(_Interrupting(repo, 2, after_commit=False), cases, **kw)
    old = json.loads(ckpt.read_text())
    for p in old["points"]:
        for k in _OLD_FORMAT_KEYS:
            del p[k]
    old["info"] = {}
    ckpt.write_text(json.dumps(old))
    assert LifelongRun.from_json(old).points[0].fluency is None
    run = run_lifelong(repo, cases, **kw)
    assert [p.edits for p in run.points] == [2, 4]
    first, second = run.points
    assert first.fluency is None and first.eval_seconds is None  # not measured then, not invented now
    assert second.fluency is not None and second.eval_seconds > 0
    base = run.info["base_cases"]["specificity"]
    assert len(base) == 4 and first.base_specificity == pytest.approx(sum(base[:2]) / 2)
    assert second.base_specificity == pytest.approx(sum(base) / 4)
    # the figures a fresh run gives: the unedited model is the same, whatever the history
    fresh = run_lifelong(Repository.init(tmp_path / "repo2", base=str(model_dirs["llama"])), cases,
                         **{**kw, "checkpoint": tmp_path / "fresh.json"})
    assert fresh.info["base_cases"] == run.info["base_cases"]
    assert [p.base_specificity for p in fresh.points] == [p.base_specificity for p in run.points]
    # fluency settings are part of what a resumed run must keep
    with pytest.raises(Exception, match="fluency"):
        run_lifelong(repo, cases, **{**kw, "fluency_tokens": 9})


def _cases_with_neighbours():
    facts = (("France", "Rome", "Paris"), ("Spain", "Oslo", "Madrid"), ("Italy", "Lima", "Rome"),
             ("Peru", "Bern", "Lima"), ("Chile", "Kyiv", "Santiago"))
    return [EvalCase(EditRequest(s, "The capital of {} is", t, target_true=tt,
                                 neighborhood=(f"The capital of {facts[(i + 1) % 5][0]} is",)),
                     (facts[(i + 1) % 5][2],))
            for i, (s, t, tt) in enumerate(facts)]


def test_lifelong_reads_specificity_on_the_untouched_neighbours(model_dirs, tmp_path):
    """Cases that say their neighbours' subjects give the specificity of the neighbours no edit
    touched: after edits 1-2, only Spain's neighbour (Italy) is untouched (France's is Spain, edited);
    after 1-4, only Peru's (Chile). The unedited model's is read on the same prompts."""
    from dataclasses import replace

    from nmkevc import Repository
    from nmkevc.evaluation.metrics import evaluate_requests

    repo = Repository.init(tmp_path / "repo", base=str(model_dirs["llama"]))
    subjects = [c.request.subject for c in _cases_with_neighbours()]
    cases = [replace(c, relation="capital", neighborhood_subjects=(subjects[(i + 1) % 5],))
             for i, c in enumerate(_cases_with_neighbours()[:4])]
    run = run_lifelong(repo, cases, batch_size=2, methods=("alphaedit",), log=lambda _: None, perplexity_every=0,
                       hparams_overrides={"layers": [1, 2]}, fluency_prompts=2, fluency_tokens=5)
    base = run.info["base_cases"]["neighbours"]
    assert len(base) == 4 and all(len(row) == 1 for row in base)
    for point, untouched in zip(run.points, (1, 3), strict=True):
        state = repo.load_model(point.commit)
        rep = evaluate_requests(state.model, state.tokenizer, cases[: point.edits])
        assert point.specificity_untouched == float(rep.records[untouched].neighborhood[0].success)
        assert point.base_specificity_untouched == float(base[untouched][0])


def test_lifelong_evaluates_all_edits_every_k_batches(model_dirs, tmp_path):
    from nmkevc import Repository
    from nmkevc.evaluation.lifelong import full_evaluation_due

    assert [full_evaluation_due(b, 10, 3) for b in range(10)] == [
        True, False, True, False, False, True, False, False, True, True]
    assert all(full_evaluation_due(b, 10, 1) for b in range(10))
    repo = Repository.init(tmp_path / "repo", base=str(model_dirs["llama"]))
    run = run_lifelong(repo, _cases_with_neighbours(), batch_size=1, methods=("memit",), log=lambda _: None,
                       perplexity_every=0, hparams_overrides={"layers": [1, 2]}, eval_every=2, fluency_prompts=0)
    full = [p.efficacy is not None for p in run.points]
    assert full == [True, True, False, True, True]  # first, every 2nd, last
    assert all(p.retention is not None and p.fluency is None for p in run.points)
    assert all((p.specificity is None) == (p.base_specificity is None) for p in run.points)
    assert run.info["fluency"] is None and "base_fluency" not in run.info
    assert run.points[0].retention == run.points[0].efficacy  # at the first batch, all edits are the first ones
    assert run.info["retention_edits"] == 100


def test_lifelong_measures_every_k_batches_and_retains_the_first_edits_across_batches(model_dirs, tmp_path,
                                                                                     monkeypatch):
    """Small batches: retention covers the first RETENTION_EDITS edits, not the first batch, and
    retention, perplexity and fluency are measured every k-th batch and at full evaluations only."""
    from nmkevc import Repository
    from nmkevc.evaluation import lifelong
    from nmkevc.evaluation.lifelong import measurement_due
    from nmkevc.evaluation.lifelong_report import markdown_table

    assert [measurement_due(b, 7, 2, 3) for b in range(7)] == [True, True, True, True, False, True, True]
    monkeypatch.setattr(lifelong, "RETENTION_EDITS", 2)
    repo = Repository.init(tmp_path / "repo", base=str(model_dirs["llama"]))
    run = run_lifelong(repo, _cases_with_neighbours(), batch_size=1, methods=("memit",), log=lambda _: None,
                       perplexity_every=1, hparams_overrides={"layers": [1, 2]}, eval_every=4, measure_every=2,
                       fluency_prompts=1, fluency_tokens=4)
    measured = [p.retention is not None for p in run.points]
    assert measured == [True, True, False, True, True]  # first (full), 2nd, 4th (full), last (full)
    assert [p.perplexity is not None for p in run.points] == measured
    assert [p.fluency is not None for p in run.points] == measured
    assert [p.efficacy is not None for p in run.points] == [True, False, False, True, True]
    assert run.info["retention_edits"] == 2 and run.info["sessions"][-1]["measure_every"] == 2
    # at the 2nd batch (a measurement only) retention is the efficacy of both first edits, as a full
    # evaluation at the 4th batch reads it from its first two records
    assert run.points[0].retention == run.points[0].efficacy
    from nmkevc.evaluation.metrics import evaluate_requests

    cases = _cases_with_neighbours()
    for i in (1, 4):
        state = repo.load_model(run.points[i].commit)
        assert run.points[i].retention == evaluate_requests(state.model, state.tokenizer, cases[:2]).efficacy
    assert "retention (first 2)" in markdown_table(run)
    with pytest.raises(NmkevcError, match="measuring every 0 batches"):
        run_lifelong(repo, _cases_with_neighbours(), batch_size=1, methods=("memit",), log=lambda _: None,
                     measure_every=0)


def test_lifelong_interleaves_methods_and_resumes(model_dirs, tmp_path):
    import pytest

    from nmkevc import Repository
    from nmkevc.evaluation.lifelong import schedule

    assert schedule(("a", "b"), 2, interleave=True) == [("a", 0), ("b", 0), ("a", 1), ("b", 1)]
    assert schedule(("a", "b"), 2, interleave=False) == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]
    repo = Repository.init(tmp_path / "repo", base=str(model_dirs["llama"]))
    ckpt = tmp_path / "ckpt.json"
    kw = dict(batch_size=2, methods=("nmke", "memit"), log=lambda _: None, perplexity_every=0,
              hparams_overrides={"layers": [1, 2]}, checkpoint=ckpt, interleave=True, fluency_prompts=0)
    with pytest.raises(KeyboardInterrupt):  # dies in nmke's second batch, after memit's first
        run_lifelong(_Interrupting(repo, 3, after_commit=True), _cases(), **kw)
    saved = json.loads(ckpt.read_text())
    assert [(p["method"], p["edits"]) for p in saved["points"]] == [("nmke", 2), ("memit", 2)]
    lines = []
    run = run_lifelong(repo, _cases(), **{**kw, "log": lines.append})
    assert [(p.method, p.edits) for p in run.points] == [
        ("nmke", 2), ("memit", 2), ("nmke", 4), ("memit", 4), ("nmke", 5), ("memit", 5)]
    assert lines[0].startswith("resuming") and "nmke 2/5, memit 2/5" in lines[0]
    for method in ("nmke", "memit"):  # each branch holds exactly its own three batches
        pts, c, line = run.points_of(method), repo.resolve(run.branches[method]), []
        while repo.commit(c).parents:
            line.append(c)
            c = repo.commit(c).parents[0]
        assert line[::-1] == [p.commit for p in pts]
    assert [s["interleave"] for s in run.info["sessions"]] == [True, True]
    assert run.info["sessions"][-1]["edits_at_start"] == {"nmke": 2, "memit": 2}
    assert run.info["sessions"][-1]["batches"] == 4


def _point(method, edits, efficacy=0.9, **kw):
    from nmkevc.evaluation.lifelong import BatchPoint

    fields = dict(method=method, edits=edits, seconds=10.0, stored_bytes=1, efficacy=efficacy,
                  generalization=0.85, specificity=0.70, retention=0.9, perplexity=27.0,
                  perplexity_change=0.02, mean_mask_fraction=0.5, commit="c" * 64, fluency=5.1,
                  base_specificity=0.80, eval_seconds=3.0)
    return BatchPoint(**{**fields, **kw})


def test_results_block_reports_a_partial_run_as_partial():
    from nmkevc.evaluation.lifelong_report import compared_points, replace_block, results_markdown

    run = LifelongRun(300, 100, ["nmke", "alphaedit"], info={"command": "python benchmarks/lifelong.py --edits 300",
                                                             "base_perplexity": 26.5, "base_fluency": 5.3})
    run.points = [_point("nmke", 100), _point("alphaedit", 100, efficacy=1.0, retention=0.95),
                  _point("nmke", 200, efficacy=None), _point("alphaedit", 200, efficacy=None),
                  _point("nmke", 300, efficacy=0.96, specificity=0.78)]
    points, same = compared_points(run)
    assert same and {m: p.edits for m, p in points.items()} == {"nmke": 100, "alphaedit": 100}
    block = results_markdown(run, "results/x")
    assert "Partial run, not finished: nmke 300/300, alphaedit 200/300 edits" in block
    assert "Finished" not in block and "at T = 100 edits" in block
    nmke_row = next(line for line in block.splitlines() if line.startswith("| nmke |"))
    # the lifelong goals: efficacy 0.9 meets 0.90; generalisation 0.85 meets 0.75; specificity 0.10 below the
    # unedited model misses; retention 0.9 meets 0.85; perplexity +2% meets +10%; fluency 5.1 is within 0.2 of 5.3
    assert "0.900 ✓" in nmke_row and "0.850 ✓" in nmke_row and "-0.100 ✗" in nmke_row and "+2.00% ✓" in nmke_row
    assert "| 0.900 ✓ | +2.00% ✓ | 5.10 ✓ |" in nmke_row
    assert "highest retention of the first 100 edits: alphaedit (0.950)" in block  # no record: the 1st batch
    assert "retention (first 100) |" in block
    assert "](results/x/retention.png)" in block and "`python benchmarks/lifelong.py --edits 300`" in block
    # nmke got further: its latest full evaluation is shown too, apart from the comparison
    later = block.split("Further, each method's latest", 1)[1]
    assert "| nmke | 300 | 0.960 ✓ |" in later and "| alphaedit |" not in later
    run.points.append(_point("alphaedit", 300, specificity=0.76, base_specificity=0.78))
    block = results_markdown(run, "results/x")
    assert block.startswith("**Finished: nmke 300/300, alphaedit 300/300 edits**") and "at T = 300" in block
    assert "Further" not in block
    # a third method that stopped at T = 100 keeps the common table there; the two that went on
    # are ranked against each other at their shared latest T
    run.methods.append("memit")
    run.points.append(_point("memit", 100))
    block = results_markdown(run, "results/x")
    later = block.split("Further, each method's latest", 1)[1]
    assert "| nmke | 300 |" in later and "| alphaedit | 300 |" in later and "| memit |" not in later
    assert "At T = 300, highest retention of the first 100 edits: nmke, alphaedit" in later
    assert "highest specificity: nmke (0.780)" in later
    run.methods.remove("memit")
    run.points.pop()
    block = results_markdown(run, "results/x")
    alpha_row = next(line for line in block.splitlines() if line.startswith("| alphaedit |"))
    assert "-0.020 ✓" in alpha_row
    assert "No lifelong run" in results_markdown(None, "results/x", "lifelong run")
    doc = "intro\n<!-- b -->\nold\n<!-- e -->\nrest\n"
    assert replace_block(doc, "<!-- b -->", "<!-- e -->", "new") == "intro\n<!-- b -->\nnew\n<!-- e -->\nrest\n"
    with pytest.raises(Exception, match="exactly one"):
        replace_block("no markers", "<!-- b -->", "<!-- e -->", "new")


def test_docs_results_block_is_generated_from_the_committed_json():
    """docs/results.md's block is what benchmarks/lifelong.py --markdown writes from the
    committed results.json (or says there is none): figures are never typed by hand."""
    import importlib.util
    import os
    from pathlib import Path

    from nmkevc.evaluation.lifelong_report import results_markdown

    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("lifelong_bench", root / "benchmarks" / "lifelong.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    doc = (root / "docs" / "results.md").read_text()
    block = doc.split(bench.BEGIN, 1)[1].split(bench.END, 1)[0].strip("\n")
    results = root / "docs" / "results" / "lifelong-countryinfo-T1000-B100"
    data = results / "results.json"
    run = LifelongRun.from_json(json.loads(data.read_text())) if data.exists() else None
    assert block == results_markdown(run, os.path.relpath(results, root / "docs"), "lifelong run at this size")


def test_lifelong_starts_no_batch_that_would_end_after_the_deadline(model_dirs, tmp_path):
    import time

    from nmkevc import Repository
    from nmkevc.evaluation.lifelong import _next_batch_seconds

    repo = Repository.init(tmp_path / "repo", base=str(model_dirs["llama"]))
    kw = dict(batch_size=2, methods=("memit",), perplexity_every=0, hparams_overrides={"layers": [1, 2]},
              checkpoint=tmp_path / "ckpt.json", fluency_prompts=0)
    with pytest.raises(KeyboardInterrupt):  # two batches done, dies in the third
        run_lifelong(_Interrupting(repo, 3, after_commit=False), _cases(), log=lambda _: None, **kw)
    lines = []
    # the next batch would take as long as the last (> 1 ms): it is not started
    run = run_lifelong(repo, _cases(), log=lines.append, deadline=time.time() + 0.001, **kw)
    assert [p.edits for p in run.points] == [2, 4]
    assert _next_batch_seconds(run, "memit") == run.points[-1].seconds + run.points[-1].eval_seconds > 0.001
    assert lines[-1].startswith("stopping before memit's batch at 4 edits")
    run = run_lifelong(repo, _cases(), log=lines.append, deadline=time.time() + 3600, **kw)
    assert [p.edits for p in run.points] == [2, 4, 5]


def _published(cases, methods, command, started, machine, points):
    from nmkevc.evaluation.lifelong import run_fingerprint

    info = {"command": command, "machine": machine, "sessions": [{"started": started, "seconds": 3600.0}],
            "hparams": {m: {"method": m} for m in methods}, "fluency": {"prompts": ["a"], "max_new_tokens": 5},
            "base_cases": {"efficacy": [0.0] * len(cases), "generalization": [], "specificity": []}}
    return LifelongRun(len(cases), 2, list(methods), points, info, {m: f"lifelong-{m}-1" for m in methods},
                       run_fingerprint(cases, 2, methods, None))


def test_a_method_run_alone_joins_the_published_results_of_the_others():
    """One method per session (machines that keep no files): the published methods this run
    does not run are kept, its own points replace theirs, and each keeps its provenance."""
    from nmkevc.evaluation.lifelong import merge_runs, provenance, run_fingerprint
    from nmkevc.evaluation.lifelong_report import results_markdown

    cases = _cases()
    earlier = _published(cases, ["nmke", "alphaedit", "memit"], "cmd all", "2026-11-25 10:00", "m1",
                         [_point("nmke", 2), _point("alphaedit", 2), _point("memit", 2), _point("nmke", 4)])
    run = _published(cases, ["nmke"], "cmd nmke", "2026-12-03 10:00", "m2",
                     [_point("nmke", 2, efficacy=0.5), _point("nmke", 4, efficacy=0.6), _point("nmke", 5)])
    merged = merge_runs(earlier, run, cases, None)
    assert merged.methods == ["nmke", "alphaedit", "memit"]
    assert [(p.method, p.edits, p.efficacy) for p in merged.points] == [
        ("nmke", 2, 0.5), ("alphaedit", 2, 0.9), ("memit", 2, 0.9), ("nmke", 4, 0.6), ("nmke", 5, 0.9)]
    assert merged.fingerprint == run_fingerprint(cases, 2, ["nmke", "alphaedit", "memit"], None)
    assert provenance(merged, "nmke")["command"] == "cmd nmke" and provenance(merged, "memit")["machine"] == "m1"
    assert set(merged.info["hparams"]) == {"nmke", "alphaedit", "memit"} and "command" not in merged.info
    block = results_markdown(merged, "results/x")
    assert "- nmke: `cmd nmke`" in block and "- alphaedit, memit: `cmd all`" in block
    assert "2 session(s), 2.0 h" in block and "machine: m1; m2" in block
    # merged results merge again (a third session runs memit)
    again = merge_runs(merged, _published(cases, ["memit"], "cmd memit", "2026-12-04 10:00", "m3",
                                          [_point("memit", 2, efficacy=0.7)]), cases, None)
    assert provenance(again, "nmke")["command"] == "cmd nmke" and provenance(again, "memit")["command"] == "cmd memit"
    assert [(p.method, p.efficacy) for p in again.points if p.edits == 2] == [
        ("nmke", 0.5), ("alphaedit", 0.9), ("memit", 0.7)]
    # results of other facts, another batch size or other fluency settings are refused
    with pytest.raises(Exception, match="another run"):
        merge_runs(earlier, run, cases[:4] + [cases[0]], None)
    with pytest.raises(Exception, match="another run"):
        merge_runs(earlier, run, cases, {"layers": [1]})
    # results measured when retention meant the first batch (2 edits here) do not join a run of the first 100
    run.info["retention_edits"] = 100
    with pytest.raises(Exception, match="retention on the first 2 edits, this run on the first 100"):
        merge_runs(earlier, run, cases, None)
    del run.info["retention_edits"]
    run.info["fluency"] = {"prompts": ["b"], "max_new_tokens": 5}
    with pytest.raises(Exception, match="fluency"):
        merge_runs(earlier, run, cases, None)


def test_lifelong_runs_of_single_methods_gather_in_one_results_folder(model_dirs, tmp_path):
    """Two sessions on fresh machines (their own --out), one method each, one results folder."""
    from nmkevc import Repository
    from nmkevc.cli.app import main
    from nmkevc.evaluation.lifelong_report import read_results

    facts = _facts_file(tmp_path)

    results = tmp_path / "results"
    kw = dict(edits=2, batch_size=1, results_dir=results, log=lambda _: None)
    repo = Repository.init(tmp_path / "repo0", base=str(model_dirs["llama"]))
    repo.lifelong(str(facts), methods=["memit"], out_dir=tmp_path / "out0", **kw)
    Repository.init(tmp_path / "repo1", base=str(model_dirs["llama"]))  # the next session: the CLI
    assert main(["-C", str(tmp_path / "repo1"), "lifelong", "-d", str(facts), "-n", "2", "-b", "1",
                 "--methods", "alphaedit", "--out", str(tmp_path / "out1"), "--results", str(results),
                 "--json"]) == 0
    run = read_results(results)
    assert run.methods == ["memit", "alphaedit"]
    assert [(p.method, p.edits) for p in run.points] == [("memit", 1), ("alphaedit", 1), ("memit", 2), ("alphaedit", 2)]
    assert set(run.info["provenance"]) == {"memit", "alphaedit"}
    # a run of other facts does not overwrite them
    repo = Repository.init(tmp_path / "repo3", base=str(model_dirs["llama"]))
    with pytest.raises(Exception, match="another run"):
        repo.lifelong(str(facts), methods=["memit"], out_dir=tmp_path / "out3", **{**kw, "edits": 1})
    assert read_results(results).points == run.points


def test_lifelong_compares_arms_of_one_method(model_dirs, tmp_path):
    """'nmke' and 'nmke:masked_update=compensated' side by side: each arm on its own branch,
    its commits made with its settings; a bad setting fails before the first batch."""
    from nmkevc import Repository

    repo = Repository.init(tmp_path / "repo", base=str(model_dirs["llama"]))
    arms = ["memit", "memit:memit_lambda0=50:layers=[1,2]"]
    run = repo.lifelong(str(_facts_file(tmp_path)), 2, 2, arms, log=lambda _: None)
    assert run.methods == arms and [p.method for p in run.points] == arms
    hp = {p.method: repo.commit(p.commit).method["hparams"] for p in run.points}
    assert hp[arms[0]]["memit_lambda0"] != 50 and hp[arms[1]]["memit_lambda0"] == 50 and hp[arms[1]]["layers"] == [1, 2]
    assert run.info["hparams"][arms[1]]["memit_lambda0"] == 50
    assert {b for b in repo.branches() if b.startswith("lifelong-memit-memit_lambda0-50-layers-")}
    head = repo.resolve("HEAD")
    for bad, needle in (("memit:memit_lambda0", "key=value"), ("memit:lamda=1", "unknown edit hyperparameter"),
                        ("rome:ridge=1", "unknown method")):
        with pytest.raises(Exception, match=needle):
            repo.lifelong(str(_facts_file(tmp_path)), 2, 2, ["memit", bad], log=lambda _: None)
    assert repo.resolve("HEAD") == head


def _facts_file(tmp_path):
    facts = tmp_path / "arms.jsonl"
    facts.write_text("".join(json.dumps({
        "requested_rewrite": {"prompt": "The capital of {} is", "subject": s, "target_new": {"str": t},
                              "target_true": {"str": tt}},
        "paraphrase_prompts": [f"The capital city of {s} is"], "neighborhood_prompts": ["The capital of Peru is"],
    }) + "\n" for s, t, tt in (("France", "Rome", "Paris"), ("Spain", "Oslo", "Madrid"))))
    return facts
