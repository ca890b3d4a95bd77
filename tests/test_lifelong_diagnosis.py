"""benchmarks/lifelong_diagnosis.py: the split of failed edits by step, and its docs block."""

import importlib.util
import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _module():
    spec = importlib.util.spec_from_file_location("lifelong_diagnosis", ROOT / "benchmarks" / "lifelong_diagnosis.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _commit(nll, residual, efficacy, over_h):
    weights = [SimpleNamespace(layer=3, neurons=768, d_ff=1536, info={"written_fraction": 0.4}),
               SimpleNamespace(layer=4, neurons=384, d_ff=1536, info={"written_fraction": 0.6})]
    return SimpleNamespace(
        method={"hparams": {"z_steps": 25, "z_clamp": 0.75}},
        info={"editor": {"z_nll": nll, "z_steps": [25, 10, 25, 3], "residual_left": residual,
                         "delta_over_h": over_h, "timings": {"z": 1.0}},
              "evaluation": {"requests": [{"efficacy": e, "generalization": 0.5} for e in efficacy]},
              "seconds": 2.0},
        weights=weights)


def test_failed_edits_are_put_down_to_the_step_that_missed():
    mod = _module()
    # request 0 fails with z short of its target; 1 fails with z fine but δ left unwritten;
    # 2 fails although both steps did their part; 3 holds
    rec = mod.batch_record(_commit(nll=[2.0, 0.1, 0.2, 0.05], residual=[0.2, 0.8, 0.3, 0.1],
                                   efficacy=[False, False, False, True], over_h=[0.75, 0.3, 0.75, 0.2]), edits=4)
    split = (rec["failed_at_commit"], rec["failed_z_missed"], rec["failed_unwritten"], rec["failed_other"])
    assert split == (3, 1, 1, 1)
    assert rec["efficacy_at_commit"] == 0.25 and rec["z_reached"] == 0.75 and rec["z_at_clamp"] == 0.5
    assert rec["z_at_max_steps"] == 0.5 and rec["residual_unwritten"] == 0.25
    assert rec["residual_left_failed"] == round((0.2 + 0.8 + 0.3) / 3, 4) and rec["residual_left_held"] == 0.1
    assert rec["mask_fraction_mean"] == 0.375 and rec["written_fraction_mean"] == 0.5


def test_docs_diagnosis_block_is_generated_from_the_committed_json():
    mod = _module()
    results = ROOT / "docs" / "results" / "lifelong-countryinfo-T1000-B100"
    path = results / "diagnosis.json"
    data = json.loads(path.read_text()) if path.exists() else {"methods": {}}
    res = json.loads((results / "results.json").read_text()) if (results / "results.json").exists() else None
    doc = (ROOT / "docs" / "results.md").read_text()
    block = doc.split(mod.BEGIN, 1)[1].split(mod.END, 1)[0].strip("\n")
    assert block == mod.markdown(data, res, os.path.relpath(results, ROOT / "docs"))


def _meter(mod, sigma, w):
    import torch

    meter = object.__new__(mod.Disturbance)
    meter.sigma, meter.scale, meter.total = {3: sigma}, {3: float(torch.trace(w @ sigma @ w.T))}, {}
    meter.chol, meter.keys, meter.solved = {3: torch.linalg.cholesky(sigma.double())}, {}, {}
    return meter


def _delta(d, keys=None):
    return SimpleNamespace(weights=[SimpleNamespace(layer=3, dense_out_in=lambda: d, K=keys)])


def test_disturbance_is_the_relative_rms_output_change_on_generic_keys():
    import torch

    mod = _module()
    torch.manual_seed(0)
    sigma = torch.randn(6, 6)
    sigma = sigma @ sigma.T  # a key second moment
    meter = _meter(mod, sigma, torch.randn(4, 6))
    d1 = torch.randn(4, 6) * 0.1
    got = meter.add(_delta(d1))
    expected = (float(torch.trace(d1 @ sigma @ d1.T)) / meter.scale[3]) ** 0.5
    assert got["disturbance"] == got["disturbance_cumulative"] == round(expected, 4)
    assert got["disturbance_floor"] is None  # a delta without keys has no floor
    got = meter.add(_delta(-d1))  # the second batch undoes the first: nothing left in total
    assert got["disturbance"] == round(expected, 4) and got["disturbance_cumulative"] == 0.0


def test_disturbance_floor_is_the_least_energy_update_writing_the_same_outputs():
    import torch

    mod = _module()
    torch.manual_seed(1)
    d_ff, n = 8, 3
    a = torch.randn(d_ff, d_ff, dtype=torch.float64)
    sigma = a @ a.T + 0.1 * torch.eye(d_ff, dtype=torch.float64)
    chol = torch.linalg.cholesky(sigma)
    keys = torch.randn(d_ff, n, dtype=torch.float64)
    y = torch.randn(4, n, dtype=torch.float64)
    # the Σ-weighted least-norm solution of ΔW K = Y reaches the floor exactly ...
    best = y @ torch.linalg.solve(keys.T @ torch.linalg.solve(sigma, keys), torch.linalg.solve(sigma, keys).T)
    assert torch.allclose(best @ keys, y)
    floor = mod.least_energy(y, keys, torch.cholesky_solve(keys, chol))
    assert abs(floor - float(torch.trace(best @ sigma @ best.T))) < 1e-9 * floor
    # ... and any other update writing the same outputs (plus a part the keys do not see) is above it
    q, _ = torch.linalg.qr(keys, mode="complete")
    other = best + torch.randn(4, d_ff - n, dtype=torch.float64) @ q[:, n:].T
    assert torch.allclose(other @ keys, y)
    assert float(torch.trace(other @ sigma @ other.T)) > floor
    # a repeated key is a consistent constraint (the same output twice), not a singular failure
    twice = torch.cat([keys, keys[:, :1]], dim=1)
    assert abs(mod.least_energy(other @ twice, twice, torch.cholesky_solve(twice, chol)) - floor) < 1e-6 * floor

    meter = _meter(mod, sigma.float(), torch.randn(4, d_ff))
    got = meter.add(_delta(other.float(), keys.float()))
    assert got["disturbance_floor"] < got["disturbance"]
    assert got["disturbance_floor"] == got["disturbance_floor_cumulative"]
    got = meter.add(_delta(best.float(), keys.float()))  # the least-energy update: at its floor
    assert got["disturbance_floor"] == pytest.approx(got["disturbance"], abs=2e-4)
    assert got["disturbance_floor_cumulative"] <= got["disturbance_cumulative"] + 1e-4


def test_spectrum_counts_the_singular_values_prune_would_shrink():
    import torch

    mod = _module()
    torch.manual_seed(2)
    w = torch.randn(4, 6, dtype=torch.float64)
    meter = _meter(mod, torch.eye(6), w.float())
    meter.base_size = {3: (float(torch.linalg.norm(w)), float(torch.linalg.svdvals(w)[0]))}
    q_out, _ = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))
    q_in, _ = torch.linalg.qr(torch.randn(6, 4, dtype=torch.float64))
    top = meter.base_size[3][1]
    sv = torch.tensor([3 * top, 2 * top, 0.5 * top, 0.1 * top], dtype=torch.float64)
    meter.add(_delta((q_out * sv) @ q_in.T))  # two singular values above W's largest
    got = meter.spectrum()["3"]
    assert got["above"] == 2 and got["of"] == 4 and got["top_ratio"] == pytest.approx(3.0, abs=1e-3)
    assert got["size"] == pytest.approx(float(sv.norm()) / meter.base_size[3][0], abs=1e-3)


def test_hidden_growth_is_h_on_the_state_edited_from_over_h_on_the_base(repo):
    """Per batch: ‖h‖ at the last edited layer (subject's last token, bare rewrite prompt) on the
    state the batch was edited from over ‖h‖ on the base, from a plain forward of the whole model;
    1 for the first batch."""
    import torch

    from nmkevc.editing.hooks import hidden_of, hooks
    from nmkevc.facts import EditRequest
    from nmkevc.models.adapters import adapter_for
    from nmkevc.models.tokens import encode

    mod = _module()
    tiny = dict(z_lr=0.5, z_steps=5, z_clamp=4.0, z_weight_decay=0.0, ridge=1e-4, ridge_relative=False,
                layers=[1, 2], stats_tokens=200)
    second = [EditRequest("Toko Yasuda", "The instrument of {} is", "Madrid"),
              EditRequest("Danielle Darrieux", "The mother tongue of {} is", "Paris")]
    commits = [repo.edit(EditRequest("Danielle Darrieux", "The mother tongue of {} is", "Rome"), **tiny).commit,
               repo.edit(second, **tiny).commit]
    infos = [repo.show(c) for c in commits]
    got = mod.hidden_growth(repo, infos)

    @torch.no_grad()
    def h(rev):
        state = repo.load_model(rev)
        batch = encode(state.tokenizer, [r.prompt.replace("{}", r.subject) for r in second],
                       [r.prompt.index("{}") + len(r.subject) for r in second], start="document")
        out = {}

        def grab(_m, _a, o):
            out["h"] = hidden_of(o)[batch.rows, batch.subject_pos].float()

        with hooks(post={adapter_for(state.model).layer(state.model, 2): grab}):
            state.model(**batch.model_inputs(), use_cache=False)
        return out["h"].norm(dim=1)

    expected = float((h(commits[0]) / h(infos[0].parents[0])).mean())
    assert got[0] == 1.0 and got[1] == pytest.approx(expected, abs=2e-4) and got[1] != 1.0
