import pytest
import torch

from nmkevc.deltas.compose import apply_to_weight, summed_out_in
from nmkevc.deltas.delta import Delta, WeightDelta
from nmkevc.deltas.measure import mask_overlap, neuron_masses
from nmkevc.errors import CorruptObjectError


def wd(idx, rank=2, d_model=8, d_ff=12, orientation="out_in", seed=0, V=None, U=None, name="w"):
    g = torch.Generator().manual_seed(seed)
    idx = torch.tensor(idx, dtype=torch.int64)
    U = torch.randn(len(idx), rank, generator=g) if U is None else U
    V = torch.randn(d_model, rank, generator=g) if V is None else V
    return WeightDelta(name, 0, orientation, d_model, d_ff, idx, U, V, torch.randn(d_ff, 1, generator=g))


def test_dense_is_V_Ut_on_columns():
    w = wd([1, 4, 7])
    dense = w.dense()
    assert torch.allclose(dense[:, [1, 4, 7]], w.V @ w.U.T)
    assert dense[:, [0, 2, 3, 5, 6, 8, 9, 10, 11]].abs().sum() == 0
    w2 = wd([1, 4, 7], orientation="in_out")
    assert torch.equal(w2.dense(), w2.dense_out_in().T)


def test_neuron_mass_matches_dense_columns():
    w = wd([0, 3, 11], rank=3)
    assert torch.allclose(w.neuron_mass().float(), w.dense_out_in().pow(2).sum(0), atol=1e-5)
    assert abs(w.frobenius() - float(w.dense_out_in().norm())) < 1e-4


def test_bytes_roundtrip_deterministic():
    d = Delta((wd([2, 5], name="b"), wd([1], name="a")), {"mask": [0.3, 0.4]})
    raw = d.to_bytes()
    assert raw == Delta(tuple(reversed(d.weights)), {"mask": [0.3, 0.4]}).to_bytes()
    back = Delta.from_bytes(raw)
    assert [w.name for w in back.weights] == ["a", "b"]
    for x, y in zip(back.weights, d.weights):
        assert torch.equal(x.U, y.U) and torch.equal(x.V, y.V) and torch.equal(x.idx, y.idx)
        assert torch.equal(x.K, y.K)
    assert back.info == {"mask": [0.3, 0.4]}
    with pytest.raises(CorruptObjectError):
        Delta.from_bytes(raw[:-5])


@pytest.mark.parametrize("bad", ["unsorted", "out_of_range", "rank"])
def test_inconsistent_shapes_rejected(bad):
    with pytest.raises(CorruptObjectError):
        if bad == "unsorted":
            wd([4, 1])
        elif bad == "out_of_range":
            wd([1, 12])
        else:
            WeightDelta("w", 0, "out_in", 8, 12, torch.tensor([1]), torch.zeros(1, 2), torch.zeros(8, 3))


@pytest.mark.parametrize("orientation", ["out_in", "in_out"])
def test_apply_sums_all_deltas_once(orientation):
    ds = [wd([1, 2], orientation=orientation, seed=s) for s in range(3)]
    base = torch.randn(ds[0].shape, dtype=torch.float32)
    got = apply_to_weight(base, ds)
    want = base.double() + sum(d.dense().double() for d in ds)
    assert got.dtype == base.dtype
    assert torch.allclose(got.double(), want, atol=1e-6)
    assert apply_to_weight(base, []) is base
    b16 = base.to(torch.bfloat16)
    assert apply_to_weight(b16, ds).dtype == torch.bfloat16


def test_mask_overlap_scores():
    a = wd([0, 1, 2, 3], seed=1)
    disjoint = wd([6, 7, 8], seed=2)
    o = mask_overlap([a], [disjoint])
    assert o.shared == 0 and o.score == 0 and not o.conflict
    opposite = WeightDelta("w", 0, "out_in", 8, 12, a.idx, a.U, -a.V)
    o = mask_overlap([a], [opposite])
    assert o.shared == 4 and o.share_a == pytest.approx(1) and o.agreement == pytest.approx(-1)
    assert o.score == pytest.approx(1) and o.conflict
    same = mask_overlap([a], [a])
    assert same.agreement == pytest.approx(1) and same.score == pytest.approx(0, abs=1e-6)
    # the score reads the summed side: two deltas that cancel leave no mass
    assert neuron_masses([a, opposite]).abs().max() < 1e-9
    assert summed_out_in([a, opposite]).abs().max() < 1e-9



def test_stored_factors_read_without_torch_are_the_deltas_own():
    # what an export sums (numpy views of the stored bytes, keys not read) is what Delta.from_bytes reads
    import numpy as np

    from nmkevc.deltas.stored import Factors, read_factors

    data = Delta((wd([2, 5], name="b"), wd([1, 3, 4], rank=3, orientation="in_out", name="a"))).to_bytes()
    factors, weights = read_factors(data), Delta.from_bytes(data).weights
    assert [f.name for f in factors] == [w.name for w in weights] == ["a", "b"]
    for f, w in zip(factors, weights):
        assert isinstance(f, Factors)
        assert (f.layer, f.orientation, f.d_model, f.d_ff, f.rank) == \
            (w.layer, w.orientation, w.d_model, w.d_ff, w.rank)
        for a, t in ((f.idx, w.idx), (f.U, w.U), (f.V, w.V)):
            assert isinstance(a, np.ndarray) and np.array_equal(a, t.numpy())


def _payload(idx: list[int]) -> bytes:
    """A delta object's bytes written directly, so that its factors may break the rules."""
    import json

    from nmkevc import tensorio

    w = wd([1, 2])
    tensors = {"w/idx": torch.tensor(idx, dtype=torch.int64), "w/U": torch.zeros(len(idx), 2), "w/V": w.V}
    meta = {"format": 1, "info": {}, "weights": {"w": {"layer": 0, "orientation": "out_in", "d_model": 8,
                                                      "d_ff": 12, "info": {}}}}
    return tensorio.dumps(tensors, {"nmkevc": json.dumps(meta)})


def test_stored_factors_refuse_what_from_bytes_refuses():
    from nmkevc.deltas.stored import read_factors

    good = Delta((wd([1, 2]),)).to_bytes()
    assert read_factors(_payload([1, 2]))[0].rank == 2
    for payload in (b"not a delta", good[:-8], _payload([4, 1]), _payload([1, 12]), _payload([-1, 3])):
        with pytest.raises(CorruptObjectError):
            read_factors(payload, "y" * 64)
        with pytest.raises(CorruptObjectError):
            Delta.from_bytes(payload, "y" * 64)
