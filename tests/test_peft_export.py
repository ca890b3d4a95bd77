"""PEFT export: the adapter PeftModel loads gives the merged export's logits (float32)."""

from __future__ import annotations

import json

import pytest
import torch
from random_deltas import random_delta, request

from nmkevc.deltas.compose import summed_out_in
from nmkevc.deltas.lowrank import low_rank
from nmkevc.errors import NmkevcError

peft = pytest.importorskip("peft")


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def test_adapter_matches_merged_export(repo, base_dir, tmp_path, arch):
    from transformers import AutoModelForCausalLM

    repo.commit_delta(random_delta(repo, layers=(1, 2), seed=1, rank=2), "a", [request("France", "Rome")])
    repo.commit_delta(random_delta(repo, layers=(2,), seed=2, rank=3, scale=0.1), "b",
                      [request("Spain", "Oslo")])
    rep = repo.export_peft("HEAD", tmp_path / "adapter")
    assert rep.exact and rep.layers == [1, 2] and rep.rank == 5 and rep.max_error == 0.0
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert cfg["layers_to_transform"] == [1, 2] and cfg["r"] == 5 and cfg["lora_alpha"] == 5
    repo.export("HEAD", tmp_path / "merged")

    ids = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(0))
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    plain = _logits(base, ids)
    model = peft.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    wrapped = [n for n, _ in model.named_modules() if n.endswith("lora_A")]
    assert len(wrapped) == 2  # exactly the edited projections, nothing else
    got, want = _logits(model, ids), _logits(merged, ids)
    assert (want - plain).abs().max() > 1e-3  # the edits change the logits...
    assert (got - want).abs().max() < 1e-4  # ...and the adapter reproduces them


def test_truncated_rank_reports_its_error(repo, tmp_path):
    repo.commit_delta(random_delta(repo, layers=(1,), seed=1, rank=4), "a", [request("France", "Rome")])
    rep = repo.export_peft("HEAD", tmp_path / "r1", rank=1)
    assert rep.rank == 1 and not rep.exact and 0 < rep.max_error < 1
    w = next(iter(repo.plumbing.plan(repo.resolve("HEAD")).values()))[0][1]
    full = summed_out_in([w])
    s = torch.linalg.svdvals(full)  # Eckart-Young, computed on the dense matrix independently
    assert abs(float(s[1:].norm() / s.norm()) - rep.max_error) < 1e-6
    f = low_rank([w], 1)
    err = float(torch.linalg.norm(full - f.B.double() @ f.A.double()) / torch.linalg.norm(full))
    assert abs(err - rep.max_error) < 1e-5
    with pytest.raises(NmkevcError, match="not an empty directory"):
        repo.export_peft("HEAD", tmp_path / "r1")


def test_exact_compression_above_matrix_rank(repo):
    # 40 stacked rank-1 facts on 6 neurons: the product has rank <= 6, kept exactly
    ws = [random_delta(repo, layers=(1,), seed=s, rank=1, neurons=[0, 3, 5, 7, 9, 11]).weights[0]
          for s in range(40)]
    f = low_rank(ws)
    assert f.rank == 6 and f.stacked_rank == 40
    full = summed_out_in(ws)
    assert torch.allclose(f.B.double() @ f.A.double(), full, atol=1e-5, rtol=1e-5)


def test_nothing_to_export(repo, tmp_path):
    with pytest.raises(NmkevcError, match="nothing to export"):
        repo.export_peft("HEAD", tmp_path / "x")
