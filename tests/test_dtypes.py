"""Devices and dtypes: a repository's runtime default, bfloat16 edits that check out to exactly
the weights evaluated at commit time, bit-exact revert, and one-line refusals."""

from __future__ import annotations

import pytest
import torch
from tiny import digest
from transformers import AutoModelForCausalLM

from nmkevc import EditRequest, Repository
from nmkevc.errors import NmkevcError
from nmkevc.models.loading import Runtime

TINY = dict(z_lr=0.5, z_steps=10, z_clamp=4.0, z_weight_decay=0.0, ridge=1e-4, ridge_relative=False, layers=[1, 2])


def test_runtime_is_validated():
    with pytest.raises(NmkevcError, match="unknown dtype"):
        Runtime("cpu", "float8")
    with pytest.raises(NmkevcError, match="unknown device"):
        Runtime("tpu", "float32")
    assert Runtime("cuda:1", "bfloat16").torch_dtype == torch.bfloat16
    if not torch.cuda.is_available():
        with pytest.raises(NmkevcError, match="no CUDA device"):
            Runtime("cuda", "float32").placement()
    assert Runtime("cpu").placement() == {}


@pytest.mark.parametrize("method", ["nmke", "memit"])
def test_bfloat16_edit_checks_out_exactly_and_reverts_bit_exact(base_dir, tmp_path, method):
    repo = Repository.init(tmp_path / "repo", base=str(base_dir), dtype="bfloat16")
    assert Repository.open(tmp_path / "repo").workbench.runtime.dtype == "bfloat16"  # the stored default
    state = repo.load_model()
    assert all(p.dtype == torch.bfloat16 for p in state.model.parameters())
    base = digest(state.model)
    fresh = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.bfloat16)
    assert digest(fresh) == base  # the base at this dtype is what from_pretrained gives

    tiny = {k: v for k, v in TINY.items() if method != "memit" or not k.startswith("ridge")}  # MEMIT has no ridge
    repo.edit(EditRequest("Danielle Darrieux", "The mother tongue of {} is", "Rome"), method=method,
              stats_tokens=200, **tiny)
    evaluated = digest(repo.load_model().model)  # the weights the commit's checks ran on
    assert evaluated != base
    again = Repository.open(tmp_path / "repo")  # a fresh process's checkout of the same commit
    assert digest(again.load_model().model) == evaluated
    repo.revert("HEAD")
    assert digest(repo.load_model().model) == base
    assert digest(Repository.open(tmp_path / "repo").load_model().model) == base


def test_an_override_does_not_change_the_default(base_dir, tmp_path):
    Repository.init(tmp_path / "repo", base=str(base_dir))
    repo = Repository.open(tmp_path / "repo", dtype="float16")
    assert repo.load_model().model.dtype == torch.float16
    assert Repository.open(tmp_path / "repo").workbench.runtime == Runtime("cpu", "float32")


def test_cli_runtime_options(base_dir, tmp_path):
    from click.testing import CliRunner

    from nmkevc.cli.app import cli

    runner = CliRunner()
    res = runner.invoke(cli, ["--dtype", "bfloat16", "init", str(tmp_path / "r"), "--base", str(base_dir)])
    assert res.exit_code == 0, res.output
    assert Repository.open(tmp_path / "r").workbench.runtime.dtype == "bfloat16"
    res = runner.invoke(cli, ["-C", str(tmp_path / "r"), "--device", "tpu", "ask", "hello"])
    assert isinstance(res.exception, NmkevcError) and "unknown device" in str(res.exception)  # main() prints it
