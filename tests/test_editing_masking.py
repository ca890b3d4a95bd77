"""Step 3 on hand-made score matrices: quantile ties, entropy bounds, the zero-mass fallback."""

from __future__ import annotations

import math

import pytest
import torch

from nmkevc.editing import entropy_ratios, neuron_mask


def test_uniform_scores_give_upper_bounds_and_a_full_mask():
    s = torch.full((4, 50), 0.7)
    mask, info = neuron_mask(s)
    assert info["H_r"] == pytest.approx(1.0)
    assert info["H_b"] == pytest.approx(1.0)
    assert info["rho_r"] == pytest.approx(0.4)
    assert info["rho_b"] == pytest.approx(0.4)
    # every neuron ties at the quantile: no information → no restriction (AlphaEdit update)
    assert info["kept"] == 50 and bool(mask.all())
    assert info["n_general"] == 50 and info["n_specific"] == 50


def test_one_hot_scores_give_lower_bounds():
    s = torch.zeros(3, 40)
    s[:, 7] = 5.0
    info = entropy_ratios(s)
    assert info["H_r"] < 1e-6 and info["H_b"] == pytest.approx(0.0, abs=1e-12)
    assert info["rho_r"] == pytest.approx(0.3, abs=1e-9)
    assert info["rho_b"] == pytest.approx(0.3)
    assert not info["zero_mass"]


def test_zero_mass_falls_back_to_lower_bound():
    s = -torch.rand(5, 30) - 0.1  # no neuron ever raises the prediction
    info = entropy_ratios(s)
    assert info["zero_mass"] and info["rho_b"] == pytest.approx(0.3) and info["H_b"] == 0.0
    mask, minfo = neuron_mask(s)
    assert minfo["rho_b"] == pytest.approx(0.3) and minfo["kept"] == int(mask.sum())


def test_entropy_formulae_and_custom_bounds():
    torch.manual_seed(0)
    s = torch.randn(6, 64)
    alpha, d = 30.0, 64
    q = torch.softmax(alpha * (s.double() - s.double().max(1, keepdim=True).values), 1)
    h_r = float((-(q * q.clamp_min(1e-300).log()).sum(1) / math.log(d)).mean())
    b = s.double().max(0).values.clamp_min(0)
    pb = b / b.sum()
    h_b = float(-(pb[pb > 0] * pb[pb > 0].log()).sum() / math.log(d))
    info = entropy_ratios(s, bounds=(0.1, 0.5), exponents=(3.0, 2.0), alpha=alpha)
    assert info["H_r"] == pytest.approx(h_r, rel=1e-9)
    assert info["H_b"] == pytest.approx(h_b, rel=1e-9)
    assert info["rho_r"] == pytest.approx(0.1 + 0.4 * h_r**3, rel=1e-9)
    assert info["rho_b"] == pytest.approx(0.1 + 0.4 * h_b**2, rel=1e-9)


def test_quantile_ties_keep_every_tied_neuron():
    # 4 prompts, 10 neurons; design the positive-z counts c = [4,4,3,3,3,2,1,0,0,0]
    # by giving neuron i a score above the row mean on exactly c_i prompts.
    counts = [4, 4, 3, 3, 3, 2, 1, 0, 0, 0]
    s = torch.full((4, 10), -1.0)
    for i, c in enumerate(counts):
        s[:c, i] = 1.0
    c = torch.tensor(counts, dtype=torch.float64)
    mask, info = neuron_mask(s)
    q = torch.quantile(c, 1 - info["rho_r"])
    expected_general = int((c >= q).sum())
    assert info["n_general"] == expected_general
    # ties at the threshold are all kept, so the general set can exceed ρ_r · D
    assert expected_general >= math.ceil(info["rho_r"] * 10)
    b = s.max(0).values  # 1 for neurons with c ≥ 1, else −1 → ties again
    qb = torch.quantile(b.double(), 1 - info["rho_b"])
    assert info["n_specific"] == int((b >= qb).sum())
    assert info["kept"] == int(mask.sum()) == int(((c >= q) | (b.double() >= qb)).sum())


def test_specific_neurons_are_the_top_bursts():
    s = torch.zeros(2, 20)
    s[0] = torch.arange(20, dtype=torch.float32) / 10  # distinct bursts, one prompt
    s[1] = -s[0]  # the other prompt is anti-correlated → general counts are flat
    mask, info = neuron_mask(s)
    k = info["n_specific"]
    assert k == int((s.max(0).values >= torch.quantile(s.max(0).values.double(), 1 - info["rho_b"])).sum())
    assert bool(mask[-k:].all())  # the largest bursts are kept


def test_bad_shapes_raise():
    with pytest.raises(ValueError):
        neuron_mask(torch.zeros(5))
