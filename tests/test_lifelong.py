"""A short run of the lifelong benchmark's code path (tiny T) so it cannot rot."""

import json

from nmkevc.evaluation.lifelong import markdown_table, run_lifelong, write_outputs
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
                       hparams_overrides={"layers": [1, 2]})
    assert [(p.method, p.edits) for p in run.points] == [
        ("nmke", 2), ("nmke", 3), ("alphaedit", 2), ("alphaedit", 3), ("memit", 2), ("memit", 3)]
    for p in run.points:
        assert 0 <= p.efficacy <= 1 and 0 <= p.retention <= 1 and p.perplexity > 1 and p.stored_bytes > 0
    nmke = [p for p in run.points if p.method == "nmke"]
    assert all(0 < p.mean_mask_fraction <= 1 for p in nmke)
    assert len(lines) == 6
    # every batch is a real commit on its own branch from the root
    for p in run.points:
        assert repo.commit(p.commit).kind == "edit"
    assert len([b for b in repo.branches() if b.startswith("lifelong-")]) == 3
    paths = write_outputs(run, tmp_path / "out")
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert len(data["points"]) == 6
    assert (tmp_path / "out" / "efficacy.png").stat().st_size > 1000 and len(paths) == 8
    assert (tmp_path / "out" / "table.md").read_text().count("\n") == 2 + 6
    assert len(markdown_table(run).splitlines()) == 2 + 6


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
