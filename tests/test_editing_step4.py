"""Step 4's calibration and reporting: λ relative to the keys' scale, the written fraction
‖ΔW k‖ / ‖r‖ per layer, the compensated masked update, and replaying hyperparameters stored
before these existed."""

from __future__ import annotations

import copy

import pytest
import torch
from dense_update import REQS, apply, dense_u, keys_and_h, load_with_projectors, solve

from nmkevc.editing import EditHparams
from nmkevc.editing.covariance import nullspace_projector
from nmkevc.editing.methods import FactorInputs, get_method
from nmkevc.editing.nullspace import NullspaceRule
from nmkevc.editing.update import masked_nullspace_factor, masked_projected_factor, nullspace_factor
from nmkevc.errors import EditRequestError

FAST = dict(z_lr=0.5, z_steps=8, z_clamp=4.0, z_weight_decay=0.0)


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def setup(request, model_dirs):
    model, tok, _, proj = load_with_projectors(model_dirs[request.param])
    return model, tok, proj


def test_relative_ridge_is_a_share_of_the_mean_kPk(setup):
    model, tok, proj = setup
    hp = EditHparams(method="alphaedit", layers=[2], ridge=0.5, **FAST)
    assert hp.ridge_relative  # the default
    (upd,) = solve(model, tok, REQS, hp, proj).updates
    k = keys_and_h(model, tok, REQS, [2], tap=None)[0][2].double()
    p = proj[2].double()
    lam = 0.5 * float(torch.einsum("in,ij,jn->n", k, p, k).mean())
    assert upd.info["ridge"] == pytest.approx(lam, rel=1e-5)
    torch.testing.assert_close(upd.U.double(), dense_u(k, p, None, lam), rtol=1e-3, atol=1e-6)
    # not the absolute value 0.5: the keys' scale enters
    assert not torch.allclose(upd.U.double(), dense_u(k, p, None, 0.5), rtol=1e-2, atol=1e-5)
    absolute = EditHparams(method="alphaedit", layers=[2], ridge=0.5, ridge_relative=False, **FAST)
    (upd_abs,) = solve(model, tok, REQS, absolute, proj).updates
    assert upd_abs.info["ridge"] == 0.5


def test_written_fraction_is_the_norm_ratio_on_the_edits_keys(setup):
    model, tok, proj = setup
    hp = EditHparams(layers=[1, 2], **FAST)
    res = solve(model, tok, REQS, hp, proj)
    work = copy.deepcopy(model)
    for upd in res.updates:  # each layer's keys are read with the earlier layers' updates applied
        k = keys_and_h(work, tok, REQS, [upd.layer], tap=None)[0][upd.layer].double()
        dw = torch.zeros(upd.V.shape[0], k.shape[0], dtype=torch.float64)
        dw[:, upd.idx] = upd.V.double() @ upd.U.double().T
        by_hand = [float((dw @ k[:, j]).norm() / upd.V[:, j].double().norm()) for j in range(k.shape[1])]
        assert upd.info["written_fraction"] == pytest.approx(sum(by_hand) / len(by_hand), rel=1e-4)
        assert 0 < upd.info["written_fraction"]
        apply(work, upd)


def test_compensated_update_touches_mask_rows_and_writes_more(setup):
    model, tok, proj = setup
    published = EditHparams(layers=[1, 2], **FAST)
    compensated = EditHparams(layers=[1, 2], masked_update="compensated", **FAST)
    pub = solve(model, tok, REQS, published, proj).updates
    comp = solve(model, tok, REQS, compensated, proj).updates
    d_ff = pub[0].keys.shape[0]
    for a, b in zip(pub, comp, strict=True):
        assert b.idx.tolist() == a.idx.tolist() and b.idx.numel() < d_ff  # the same mask, no more
    # the first layer solves for the same keys and residual share in both forms; a later layer's
    # share is what the layers before it left, which differs between the two forms
    assert comp[0].info["written_fraction"] >= pub[0].info["written_fraction"]
    # its first layer solves the published system restricted to the mask's rows and equations
    first = comp[0]
    k = keys_and_h(model, tok, REQS, [1], tap=None)[0][1].double()
    p = proj[1].double()
    s = first.idx
    a = p @ k @ k.T + first.info["ridge"] * torch.eye(d_ff, dtype=torch.float64)
    u_s = torch.linalg.solve(a[s][:, s], (p @ k)[s])
    torch.testing.assert_close(first.U.double(), u_s, rtol=1e-3, atol=1e-6)


def test_compensated_factor_with_prior_cov_equals_the_restricted_dense_system():
    g = torch.Generator().manual_seed(1)
    d_ff, n = 30, 3
    keys = torch.randn(d_ff, n, generator=g, dtype=torch.float64)
    basis = torch.linalg.qr(torch.randn(d_ff, 20, generator=g, dtype=torch.float64))[0]
    c = torch.randn(d_ff, 4, generator=g, dtype=torch.float64)
    prior = c @ c.T
    mask = torch.rand(d_ff, generator=g) < 0.6
    s = torch.nonzero(mask)[:, 0]
    for p in (None, basis @ basis.T):
        pp = torch.eye(d_ff, dtype=torch.float64) if p is None else p
        a = pp @ (keys @ keys.T + prior) + 2.0 * torch.eye(d_ff, dtype=torch.float64)
        want = torch.zeros(d_ff, n, dtype=torch.float64)
        want[s] = torch.linalg.solve(a[s][:, s], (pp @ keys)[s])
        torch.testing.assert_close(masked_nullspace_factor(keys, p, prior, 2.0, mask), want)
        # without C, the n × n shortcut gives the same as the |S| × |S| system
        torch.testing.assert_close(masked_nullspace_factor(keys, p, None, 2.0, mask),
                                   masked_nullspace_factor(keys, p, torch.zeros(d_ff, d_ff), 2.0, mask))
    # the full mask is the unmasked solve (AlphaEdit)
    full = torch.ones(d_ff, dtype=torch.bool)
    torch.testing.assert_close(masked_nullspace_factor(keys, None, prior, 2.0, full),
                               nullspace_factor(keys, None, prior, 2.0))


def _preserved(g, d_ff, rank=12, count=400):
    """Preserved keys concentrated in a `rank`-dimensional subspace, and Σ = E[k kᵀ] of them."""
    basis = torch.randn(d_ff, rank, generator=g, dtype=torch.float64)
    k0 = basis @ torch.randn(rank, count, generator=g, dtype=torch.float64) \
        + 0.01 * torch.randn(d_ff, count, generator=g, dtype=torch.float64)
    return k0, k0 @ k0.T / count


def test_projected_update_keeps_the_preserved_keys_that_zeroed_rows_disturb():
    """Zeroing rows of the null-space solution (published) leaves the null space; the projected
    form solves on the mask's rows with Σ_SS's own null space, so ΔW k₀ stays ~0."""
    g = torch.Generator().manual_seed(2)
    d_ff, n = 40, 3
    k0, sigma = _preserved(g, d_ff)
    keys = torch.randn(d_ff, n, generator=g, dtype=torch.float64)
    mask = torch.rand(d_ff, generator=g) < 0.55
    rule = NullspaceRule(threshold=1e-2)
    p, _ = nullspace_projector(sigma, rule)
    published = nullspace_factor(keys, p, None, 0.5) * mask[:, None]
    u, lam, kept = masked_projected_factor(keys, sigma, None, mask, lambda k, pp: 0.5, rule)
    assert lam == 0.5 and 0 < kept < int(mask.sum())
    assert bool((u[~mask] == 0).all()) and u[mask].abs().sum() > 0
    def leak(x):  # how much a unit of update moves the preserved keys' outputs
        return float((x.T @ k0).norm() / x.norm())

    alphaedit = nullspace_factor(keys, p, None, 0.5)  # unmasked: what the null space allows at all
    assert leak(u) < 1.5 * leak(alphaedit) and leak(published) > 20 * leak(alphaedit)
    # it is AlphaEdit's solve on the sub-problem: P_S from Σ_SS, and the whole mask is AlphaEdit itself
    s = torch.nonzero(mask)[:, 0]
    p_s, _ = nullspace_projector(sigma[s][:, s], rule)
    torch.testing.assert_close(u[s], nullspace_factor(keys[s], p_s, None, 0.5))
    full = torch.ones(d_ff, dtype=torch.bool)
    prior = keys[:, :1] @ keys[:, :1].T
    u_full, _, _ = masked_projected_factor(keys, sigma, prior, full, lambda k, pp: 0.5, rule)
    torch.testing.assert_close(u_full, nullspace_factor(keys, p.double(), prior, 0.5), rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("form", ["projected", "weighted"])
def test_masked_forms_reading_sigma_through_the_engine(setup, form):
    """The forms that read Σ refuse up front without it, keep the published mask, and report
    their own solve's figure (the mask's null space kept; λ0)."""
    model, tok, proj = setup
    sigma, _ = __import__("nmkevc.editing", fromlist=["key_second_moment"]).key_second_moment(
        model, tok, ["The capital of France is Paris.", "Rome is the capital of Italy."] * 4, [1, 2])
    own = dict(nullspace_keep_fraction=0.7) if form == "projected" else dict(weighted_lambda0=0.05)
    hp = EditHparams(layers=[1, 2], masked_update=form, **own, **FAST)
    with pytest.raises(Exception, match="second moment"):
        solve(model, tok, REQS, hp, proj)
    res = solve(model, tok, REQS, hp, proj, sigma=sigma)
    pub = solve(model, tok, REQS, EditHparams(layers=[1, 2], **FAST), proj).updates
    for a, b in zip(pub, res.updates, strict=True):
        assert b.idx.tolist() == a.idx.tolist()  # the same mask
        if form == "projected":
            assert 0 < b.info["mask_nullspace_kept"] <= b.idx.numel() and b.info["ridge"] > 0
        else:  # solved on the mask's rows: it writes more of its share than the zeroed rows do
            assert b.info["lambda0"] == 0.05 and b.info["written_fraction"] > a.info["written_fraction"]


def test_weighted_masked_update_is_memits_solve_on_the_mask_rows():
    """U_S = (λ0 Σ_SS + C_SS + K_S K_Sᵀ)⁻¹ K_S, zero outside the mask; with the whole mask and no C
    it is MEMIT's factor."""
    from nmkevc.editing.update import memit_factor

    g = torch.Generator().manual_seed(3)
    d, n = 10, 3
    keys = torch.randn(d, n, generator=g, dtype=torch.float64)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    sigma = a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)
    old = torch.randn(d, 2, generator=g, dtype=torch.float64)
    prior = old @ old.T
    mask = torch.zeros(d, dtype=torch.bool)
    mask[[0, 2, 3, 7, 9]] = True
    hp = EditHparams(masked_update="weighted", weighted_lambda0=2.0)
    nmke = get_method("nmke")
    inputs = FactorInputs(keys=keys, projector=None, prior_cov=prior, second_moment=sigma, mask=mask)
    got = nmke.factor(inputs, hp)
    s = mask.nonzero().squeeze(1)
    want = torch.linalg.solve(2.0 * sigma[s][:, s] + prior[s][:, s] + keys[s] @ keys[s].T, keys[s])
    torch.testing.assert_close(got.U[s], want)
    assert not got.U[~mask].any() and got.info["lambda0"] == 2.0
    full = nmke.factor(FactorInputs(keys=keys, projector=None, prior_cov=None, second_moment=sigma,
                                    mask=torch.ones(d, dtype=torch.bool)), hp)
    torch.testing.assert_close(full.U, memit_factor(keys, sigma, 2.0))
    with pytest.raises(EditRequestError, match="second moment"):
        nmke.factor(FactorInputs(keys=keys, projector=None, prior_cov=None, second_moment=None, mask=mask), hp)
    with pytest.raises(EditRequestError, match="weighted_lambda0"):
        EditHparams(masked_update="weighted", weighted_lambda0=0)


def test_hparams_stored_before_relative_ridge_replay_as_made():
    """A commit's hparams written before `ridge_relative` / `masked_update` existed hold an
    absolute λ (ridge 10) and the published masked update: they must replay that way."""
    old = EditHparams().to_json()
    del old["ridge_relative"], old["masked_update"]
    old["ridge"] = 10.0
    hp = EditHparams.from_json(old)
    assert hp.ridge_relative is False and hp.masked_update == "published" and hp.ridge == 10.0
    g = torch.Generator().manual_seed(0)
    keys = torch.randn(12, 2, generator=g)
    mask = torch.arange(12) < 7
    solved = get_method("nmke").factor(FactorInputs(keys, None, None, None, mask), hp)
    assert solved.info["ridge"] == 10.0
    torch.testing.assert_close(solved.U[mask], nullspace_factor(keys, None, None, 10.0)[mask])
    assert bool((solved.U[~mask] == 0).all())
    assert EditHparams.from_json({}).ridge == 10.0  # no stored hyperparameters at all: the old engine's
    # a current record round-trips with its own values, not the legacy ones
    new = EditHparams(masked_update="compensated")
    again = EditHparams.from_json(new.to_json())
    assert again == new and again.ridge_relative is True


@pytest.mark.parametrize("bad", [{"masked_update": "sparse"}, {"ridge_relative": "yes"}, {"ridge": 0}])
def test_bad_step4_hparams_are_refused(bad):
    with pytest.raises(EditRequestError, match="invalid edit hyperparameters|unknown masked_update"):
        EditHparams.from_json({**EditHparams().to_json(), **bad})
