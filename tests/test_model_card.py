"""Every export carries a model card that the hub's own library reads: base, facts, method,
protocol, size and figures (issue: publish the result)."""

from __future__ import annotations

from pathlib import Path

import pytest
from random_deltas import random_delta, request

from nmkevc.facts import EditRequest

huggingface_hub = pytest.importorskip("huggingface_hub")


def _teach(repo, n: int = 2):
    for i in range(n):
        repo.commit_delta(random_delta(repo, seed=i + 1), f"teach {i}",
                          [EditRequest.from_json(request(f"Subject{i}", f"Target{i}"))])


def test_hf_export_writes_a_card_the_hub_library_reads(repo, tmp_path):
    _teach(repo)
    repo.edit(EditRequest("France", "The capital of {} is", "Rome", target_true="Paris"), stats_tokens=300, z_steps=2)
    repo.export("HEAD", tmp_path / "out")
    card = huggingface_hub.ModelCard.load(tmp_path / "out" / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "transformers"
    assert {"nmkevc", "knowledge-editing", "nmke"} <= set(data["tags"])
    assert "base_model" not in data  # a local directory has no hub id
    text = card.text
    assert repo.resolve() in text and "| France | The capital of {} is | Rome | Paris |" in text
    assert "Subject0" in text and "Subject1" in text
    assert '"method": "nmke"' in text  # the protocol of the latest nmke commit
    assert "Efficacy at commit time" in text and "Drift from the base" in text
    # exporting again writes the same card (an export is deterministic)
    repo.export(repo.resolve(), tmp_path / "again")
    assert (tmp_path / "again" / "README.md").read_bytes() == (tmp_path / "out" / "README.md").read_bytes()


def test_peft_export_card(repo, tmp_path):
    _teach(repo, 1)
    repo.export("HEAD", tmp_path / "adapter", format="peft")
    card = huggingface_hub.ModelCard.load(tmp_path / "adapter" / "README.md")
    assert card.data.to_dict()["library_name"] == "peft"
    assert "LoRA adapter" in card.text and "exact" in card.text


def test_hostile_fact_text_stays_inside_its_cell(repo, tmp_path):
    evil = EditRequest.from_json({**request("A|B", "x\u001b[2J"), "prompt": "---\nlicense: {}"})
    repo.commit_delta(random_delta(repo, seed=3), "evil", [evil])
    repo.export("HEAD", tmp_path / "out")
    card = huggingface_hub.ModelCard.load(tmp_path / "out" / "README.md")
    assert "license" not in card.data.to_dict() and "A\\|B" in card.text and "\u001b" not in card.text


def test_many_facts_point_at_the_provenance(repo, tmp_path, monkeypatch):
    from nmkevc.porcelain.exports import card

    monkeypatch.setattr(card, "MAX_FACTS", 1)
    _teach(repo, 3)
    repo.export("HEAD", tmp_path / "out")
    text = (tmp_path / "out" / "README.md").read_text()
    assert "2 more fact(s): every one is in `nmkevc.json`" in text


def test_embedded_base_names_its_hub_id_and_licence():
    from types import SimpleNamespace

    from nmkevc.bases import EMBEDDED_HUB_ID, BaseSource, parse_base_argument
    from nmkevc.porcelain.exports.card import _base_identity

    job = SimpleNamespace(bench=None, base="x")
    assert _base_identity(job, parse_base_argument(None)) == (EMBEDDED_HUB_ID, "apache-2.0")
    hub = BaseSource("hub", "org/model")
    job = SimpleNamespace(bench=SimpleNamespace(base_dir=lambda _b: Path("/nonexistent")), base="x")
    assert _base_identity(job, hub) == ("org/model", None)
