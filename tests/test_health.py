"""Health in the history: every edit and merge records how far the model has drifted from its
base, show/log/status print it, and edit warns past the repository's threshold."""

from __future__ import annotations

import json

import torch

from nmkevc.cli.app import main
from nmkevc.facts import EditRequest
from nmkevc.workbench.health import factored_energy, norm_growth, output_energy, state_health
from nmkevc.workbench.statistics import second_moments


def _edit(repo, subject, target, **kw):
    return repo.edit(EditRequest(subject, "The capital of {} is", target), stats_tokens=300, z_steps=2, **kw)


def test_edit_records_norm_growth_and_disturbance(repo):
    first = _edit(repo, "France", "Rome")
    h = first.health
    assert h["norm_growth"] > 0 and h["disturbance"] > 0
    assert h["disturbance_cumulative"] == h["disturbance"]  # one delta since the base
    assert repo.commit().info["health"] == h and set(h["layers"]) == {str(x["layer"]) for x in first.layers}
    second = _edit(repo, "Germany", "Paris").health
    assert second["disturbance_cumulative"] != second["disturbance"]


def test_figures_are_the_definitions(repo):
    """norm growth = ‖W + ΣΔ‖/‖W‖ − 1 and disturbance = sqrt(tr(ΔW Σ ΔWᵀ)/tr(W Σ Wᵀ)), recomputed here."""
    _edit(repo, "France", "Rome")
    _edit(repo, "Germany", "Paris")
    bench = repo.workbench
    c = repo.commit()
    layer = int(next(iter(c.info["health"]["layers"])))
    sigmas, _ = second_moments(bench, c.base, [layer], bench.corpus(), 300)
    adapter = bench.adapter(c.base)
    name = adapter.weight_name(layer)
    base = adapter.to_out_in(bench.weights(c.base).get(name)).double()
    total = sum(w.dense_out_in().double() for _, w in repo.plumbing.plan(repo.resolve())[name])
    sig = sigmas[layer].double()
    got = state_health(bench, c.base, repo.effective(), sigmas)["layers"][str(layer)]
    assert abs(got["norm_growth"] - (float((base + total).norm() / base.norm()) - 1)) < 1e-6
    want = (output_energy(total, sig) / output_energy(base, sig)) ** 0.5
    assert abs(got["disturbance_cumulative"] - want) < 1e-6
    assert torch.isfinite(torch.tensor(want))
    assert c.info["health"]["layers"][str(layer)]["disturbance_cumulative"] == round(want, 6)


def test_show_log_status_and_json_carry_health(repo, capsys):
    _edit(repo, "France", "Rome")
    root = str(repo.root)
    for args in (["show"], ["log", "--stat"]):
        assert main(["-C", root, *args]) == 0
        assert "health: norm growth +" in capsys.readouterr().out
    assert main(["-C", root, "status"]) == 0
    assert "drift  norm growth" in capsys.readouterr().out
    assert main(["-C", root, "status", "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["drift_commit"] == repo.resolve() and st["drift"]["disturbance_cumulative"] > 0
    repo.revert("HEAD")  # a revert measures nothing: status says which commit the figure is from
    assert main(["-C", root, "status"]) == 0
    assert "(as of " in capsys.readouterr().out


def test_edit_warns_past_the_threshold(repo, capsys):
    plumbing = repo.plumbing
    plumbing.config.settings["drift_warn"] = 0.0
    plumbing.config.save(plumbing.dir / "config.json")
    code = main(["-C", str(repo.root), "edit", "-s", "France", "-p", "The capital of {} is", "-t", "Rome",
                 "--stats-tokens", "300", "--set", "z_steps=2"])
    out = capsys.readouterr()
    assert code == 0 and "warning: the model has drifted" in out.err and "drift_warn" in out.err
    plumbing.config.settings["drift_warn"] = 100.0
    plumbing.config.save(plumbing.dir / "config.json")
    fresh = type(repo).open(repo.root)
    assert _edit(fresh, "Germany", "Paris").warnings == []


def test_merge_records_the_health_of_the_merged_state(repo):
    _edit(repo, "France", "Rome")
    repo.branch("side")
    _edit(repo, "Germany", "Paris")
    repo.switch("side")
    _edit(repo, "Spain", "Lisbon")
    rep = repo.merge("main", functional=False, strategy="sum")
    assert rep.health["disturbance_cumulative"] > 0
    assert repo.commit().info["health"] == rep.health


def test_factored_figures_equal_the_dense_ones():
    """The figures from the factors V Uᵀ (a thin history) equal those of the dense ΔW."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(12, 30, generator=g, dtype=torch.float64)
    a = torch.randn(30, 30, generator=g, dtype=torch.float64)
    sigma = a @ a.T / 30
    for rank in (1, 5):
        u = torch.randn(30, rank, generator=g, dtype=torch.float64)
        v = torch.randn(12, rank, generator=g, dtype=torch.float64) * 0.1
        dense = v @ u.T
        assert abs(factored_energy(u, v, sigma) - output_energy(dense, sigma)) < 1e-9 * output_energy(dense, sigma)
        want = float((base + dense).norm() / base.norm()) - 1
        assert abs(norm_growth(base, u, v, None) - want) < 1e-12
        assert norm_growth(base, u, v, dense) == want
