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
    assert (tmp_path / "out" / "efficacy.png").stat().st_size > 1000 and len(paths) == 7
    assert len(markdown_table(run).splitlines()) == 2 + 6
