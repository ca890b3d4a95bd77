"""`edit`, `ask`, `blame`, `eval` and `dataset` through the CLI: bad input and a tiny-model flow."""

import json

import pytest

from nmkevc import Repository
from nmkevc.cli.app import main


def run(capsys, repo, *args):
    code = main(["-C", str(repo.root), *args])
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return code, out.out, out.err


def one_line(err: str) -> bool:
    lines = [x for x in err.strip().splitlines() if x]
    return len(lines) == 1 and lines[0].startswith("error: ")


@pytest.mark.parametrize("args,needle", [
    (["-s", "Spain", "-p", "The capital of France is", "-t", "Rome"], "contains neither"),
    (["-s", "France", "-p", "The capital of {} is", "-t", "  "], "target is empty"),
    (["-s", "France", "-p", "The capital of {} is", "-t", "Rome", "--method", "rome"], "--method"),
    (["-s", "France", "-p", "The capital of {} is"], "missing --target"),
    (["-s", "France", "-p", "The capital of {} is", "-t", "Rome", "--layers", "x-y"], "--layers"),
    (["-s", "France", "-p", "The capital of {} is", "-t", "Rome", "--layers", "2-99"], "does not exist"),
])
def test_edit_bad_input(repo, capsys, args, needle):
    head = repo.resolve()
    code, _, err = run(capsys, repo, "edit", *args)
    assert code != 0 and one_line(err) and needle in err
    assert Repository.open(repo.dir).resolve() == head


def test_malformed_edit_file_names_line(repo, capsys, tmp_path):
    f = tmp_path / "edits.jsonl"
    f.write_text('{"subject": "France", "prompt": "The capital of {} is", "target": "Rome"}\n'
                 '{"subject": "Spain", "prompt": "The capital of {} is"\n')
    code, _, err = run(capsys, repo, "edit", "--file", str(f))
    assert code != 0 and one_line(err) and "line 2" in err
    f.write_text('{"subject": "France", "prompt": "The capital of {} is", "target": "Rome"}\n'
                 '{"subject": "Spain", "prompt": "The capital of {} is", "target": ""}\n')
    code, _, err = run(capsys, repo, "edit", "--file", str(f))
    assert code != 0 and one_line(err) and "line 2" in err


def test_dataset_build(repo, capsys, tmp_path):
    out = tmp_path / "ci.json"
    code, text, _ = run(capsys, repo, "dataset", "build", "countryinfo", str(out), "--max-per-relation", "2")
    assert code == 0 and "wrote 8 records" in text
    recs = json.loads(out.read_text())
    assert all("{}" in r["requested_rewrite"]["prompt"] for r in recs)
