"""Extension points are registries that take a new implementation in one file: the
examples in examples/extensions/ are such files, and here they run through the Python
API and the CLI exactly as the shipped ones do."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from random_deltas import random_delta, request

from nmkevc.cli.app import main
from nmkevc.facts import EditRequest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "extensions"


def load_example(name: str):
    """Import examples/extensions/<name>.py as a module (it registers itself)."""
    spec = importlib.util.spec_from_file_location(f"nmkevc_example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def facts_format():
    from nmkevc.porcelain import exports

    load_example("facts_export")
    yield "facts"
    exports.FORMATS.pop("facts", None)


def test_an_export_format_in_one_file(repo, tmp_path, capsys, facts_format):
    assert "facts" in repo.export_formats() and {"hf", "peft"} <= set(repo.export_formats())
    cid = repo.commit_delta(random_delta(repo, seed=1), "teach France",
                            [EditRequest.from_json(request("France", "Rome"))])
    rep = repo.export("HEAD", tmp_path / "out", format=facts_format)
    data = json.loads((tmp_path / "out" / "facts.json").read_text())
    assert rep.facts == 1 and data["commit"] == cid and data["facts"][0]["subject"] == "France"
    # the CLI lists nothing by hand: the registered format is accepted there too
    code = main(["-C", str(repo.root), "export", "HEAD", str(tmp_path / "cli"), "--format", "facts"])
    out = capsys.readouterr()
    assert code == 0 and "1 fact(s)" in out.out and (tmp_path / "cli" / "facts.json").is_file()
    # what every export shares is the registry's: a non-empty target and unknown options are refused
    code = main(["-C", str(repo.root), "export", "HEAD", str(tmp_path / "cli"), "--format", "facts"])
    assert code != 0
    code = main(["-C", str(repo.root), "export", "HEAD", str(tmp_path / "x"), "--format", "facts", "--rank", "2"])
    err = capsys.readouterr().err
    assert code != 0 and "--rank does not apply to --format facts" in err and not (tmp_path / "x").exists()


def test_unknown_export_format_is_one_line(repo, tmp_path, capsys):
    code = main(["-C", str(repo.root), "export", "HEAD", str(tmp_path / "x"), "--format", "onnx"])
    err = capsys.readouterr().err
    assert code != 0 and "unknown export format 'onnx'" in err and "Traceback" not in err


@pytest.fixture
def sparse_method():
    from nmkevc.editing.registry import _METHODS

    load_example("method_variant")
    yield "nmke-sparse"
    _METHODS.pop("nmke-sparse", None)


def test_a_method_variant_in_one_file(repo, sparse_method):
    from nmkevc.editing import EditHparams

    req = EditRequest("France", "The capital of {} is", "Rome")
    out = repo.edit(req, method=sparse_method, keep_share=0.25, stats_tokens=300, z_steps=2)
    c = repo.commit()
    assert c.method["name"] == sparse_method and c.method["hparams"]["keep_share"] == 0.25
    hp = EditHparams.from_json(c.method["hparams"])  # the stored name picks the record back
    assert type(hp).__name__ == "SparseNmkeHparams" and hp.keep_share == 0.25
    delta = repo.plumbing.delta(c.delta)
    for w, layer in zip(delta.weights, out.layers, strict=True):
        written = int((w.U.abs().sum(dim=1) > 0).sum())
        assert written == max(1, round(0.25 * layer["neurons"])) < layer["neurons"]
    with pytest.raises(Exception, match="keep_share must lie"):
        EditHparams(method=sparse_method, keep_share=0)
    with pytest.raises(Exception, match="keep_share do"):
        EditHparams(method="nmke").updated(keep_share=0.5)  # NMKE's record has no such field
