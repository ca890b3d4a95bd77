"""Materialisation stays bit-identical to the straightforward sum, the materialised cache is
used only for its own state, and verbs that only move refs run without torch."""

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from random_deltas import random_delta, request
from safetensors import safe_open
from safetensors.torch import load as load_safetensors

from nmkevc import Repository, tensorio
from nmkevc.deltas.compose import apply_to_weight, stacked_factors
from nmkevc.deltas.delta import WeightDelta
from nmkevc.facts import EditRequest
from nmkevc.models.weights import AUX_FILES
from nmkevc.repo.materialised import MIN_DELTAS

ROOT = Path(__file__).resolve().parent.parent


def reference_factors(deltas: list[WeightDelta]) -> tuple[torch.Tensor, torch.Tensor]:
    """U_full, V_full the plain way: one float64 column block per delta, in order."""
    total_r = sum(d.rank for d in deltas)
    u = torch.zeros(deltas[0].d_ff, total_r, dtype=torch.float64)
    v = torch.empty(deltas[0].d_model, total_r, dtype=torch.float64)
    col = 0
    for d in deltas:
        u[d.idx, col : col + d.rank] = d.U.double()
        v[:, col : col + d.rank] = d.V.double()
        col += d.rank
    return u, v


def reference_sum(base: torch.Tensor, deltas: list[WeightDelta]) -> torch.Tensor:
    """The definition (docs/storage.md): one product of the stacked factors, added to the
    float64 base, cast once."""
    deltas = [d for d in deltas if d.idx.numel() and d.rank]
    if not deltas:
        return base
    u, v = reference_factors(deltas)
    total = v @ u.T
    if deltas[0].orientation == "in_out":
        total = total.T
    return (base.double() + total).to(base.dtype).contiguous()


def _wd(seed, d_model=24, d_ff=40, k=13, rank=3, dtype=torch.float32, orientation="out_in"):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(d_ff, generator=g)[:k].sort().values
    return WeightDelta("w", 0, orientation, d_model, d_ff, idx,
                       torch.randn(k, rank, generator=g).to(dtype), torch.randn(d_model, rank, generator=g).to(dtype))


@pytest.mark.parametrize("orientation", ["out_in", "in_out"])
def test_stacked_sum_is_bit_identical_to_the_plain_sum(orientation):
    # mixed ranks, sizes and factor dtypes, one empty delta: the entries and the product must not move a bit
    deltas = [_wd(s, k=k, rank=r, dtype=dt, orientation=orientation)
              for s, (k, r, dt) in enumerate([(13, 3, torch.float32), (40, 1, torch.float32), (1, 5, torch.float64),
                                              (0, 2, torch.float32), (27, 3, torch.bfloat16)] * 7)]
    u, v = stacked_factors(deltas)
    u_ref, v_ref = reference_factors([d for d in deltas if d.idx.numel()])
    # the same entries (stored rank-major, where the reference is neuron-major): the product's
    # bytes must not move
    assert torch.equal(u, u_ref) and torch.equal(v, v_ref)
    for dtype in (torch.float32, torch.bfloat16):
        shape = (24, 40) if orientation == "out_in" else (40, 24)
        base = torch.randn(*shape, generator=torch.Generator().manual_seed(9)).to(dtype)
        got, want = apply_to_weight(base, deltas), reference_sum(base, deltas)
        assert got.dtype == dtype and torch.equal(got.view(torch.uint8), want.view(torch.uint8))


def test_a_long_stacked_sum_is_bit_identical_to_the_neuron_major_product():
    # many deltas, a rank past d_model (as a long history's): the rank-major factors the
    # sums build give the bytes the neuron-major layout gave before them
    deltas = [_wd(s, d_model=64, d_ff=160, k=k, rank=r) for s, (k, r) in enumerate([(80, 6), (160, 1), (33, 2)] * 40)]
    base = torch.randn(64, 160, generator=torch.Generator().manual_seed(3))
    assert torch.equal(apply_to_weight(base, deltas).view(torch.uint8), reference_sum(base, deltas).view(torch.uint8))


def _history(repo, n):
    commits = []
    for i in range(n):
        delta = random_delta(repo, layers=(1, 2) if i % 3 else (2,), seed=i, rank=1 + i % 3, frac=0.3 + 0.02 * (i % 5))
        commits.append(repo.commit_delta(delta, f"edit {i}", [EditRequest.from_json(request(f"S{i}", f"T{i}"))]))
    return commits


def _export_tensors(repo, rev, out) -> dict[str, bytes]:
    repo.export(rev, out)
    (f,) = out.glob("*.safetensors")
    with safe_open(f, framework="pt") as h:
        return {k: h.get_tensor(k).contiguous().view(torch.uint8).numpy().tobytes() for k in h.keys()}  # noqa: SIM118


def _reference_tensors(repo, rev) -> dict[str, bytes]:
    plumbing = repo.plumbing
    cid = plumbing.resolve(rev)
    weights = repo.workbench.base_model(plumbing.commit(cid).base).weights
    plan = plumbing.plan(cid)
    out = {}
    for spec in weights.specs():
        entries = next((e for name, e in plan.items() if weights.resolve(name) == spec.name), [])
        t = reference_sum(weights.get(spec.name), [w for _, w in entries])
        out[spec.name] = t.contiguous().view(torch.uint8).numpy().tobytes()
    return out


def test_export_is_the_reference_sum_cached_or_not_and_revert_stays_exact(repo, tmp_path):
    commits = _history(repo, MIN_DELTAS + 3)
    want = _reference_tensors(repo, "HEAD")
    assert _export_tensors(repo, "HEAD", tmp_path / "cold") == want  # computed, then cached
    cache = repo.plumbing.materialised
    files = list(cache.dir.glob("*.safetensors"))
    assert len(files) == 1
    assert _export_tensors(Repository.open(repo.dir), "HEAD", tmp_path / "warm") == want  # read back
    # a damaged cache file is not used: the export recomputes the same bytes
    data = bytearray(files[0].read_bytes())
    data[-3] ^= 0x40
    files[0].write_bytes(bytes(data))
    assert _export_tensors(Repository.open(repo.dir), "HEAD", tmp_path / "damaged") == want
    # a file stored for another state is not used for this one
    other = _reference_tensors(repo, commits[-2])
    files = list(cache.dir.glob("*.safetensors"))
    files[0].rename(cache.path(repo.plumbing.state_key(repo.commit().base, repo.effective(commits[-2]))))
    assert _export_tensors(Repository.open(repo.dir), commits[-2], tmp_path / "other") == other
    # revert: bit for bit the state without the reverted delta (no cache entry of HEAD's is reused)
    repo.revert(commits[-1])
    assert _export_tensors(Repository.open(repo.dir), "HEAD", tmp_path / "reverted") == other
    base = _reference_tensors(repo, commits[0] + "~1")
    for c in reversed(commits[:-1]):
        repo.revert(c)
    assert _export_tensors(Repository.open(repo.dir), "HEAD", tmp_path / "all-reverted") == base
    assert len(list(cache.dir.glob("*.safetensors"))) <= 2


def _reference_directory(repo, rev) -> dict[str, bytes]:
    """Every file an `hf` export of `rev` holds, made the straightforward way: each delta's
    payload read by safetensors' own reader, each edited weight summed by the definition
    (`reference_sum`), each weight file of the base written whole by the canonical writer
    (tensorio.dumps), the base's other files copied. The card and provenance are not here."""
    plumbing = repo.plumbing
    cid = plumbing.resolve(rev)
    base_id = plumbing.commit(cid).base
    weights = repo.workbench.base_model(base_id).weights
    by_weight: dict[str, list[WeightDelta]] = {}
    for did in plumbing.delta_ids(plumbing.effective(cid)):
        payload = plumbing.store.get(did, "delta")  # verified against its id
        (n,) = struct.unpack("<Q", payload[:8])
        meta = json.loads(json.loads(payload[8 : 8 + n])["__metadata__"]["nmkevc"])
        tensors = load_safetensors(payload)
        for name, m in meta["weights"].items():
            by_weight.setdefault(weights.resolve(name), []).append(WeightDelta(
                name, m["layer"], m["orientation"], m["d_model"], m["d_ff"], tensors[f"{name}/idx"],
                tensors[f"{name}/U"], tensors[f"{name}/V"]))
    out = {}
    for f in sorted(weights.model_dir.glob("*.safetensors")):
        with safe_open(f, framework="pt") as h:
            out[f.name] = tensorio.dumps({k: reference_sum(h.get_tensor(k), by_weight.get(k, []))
                                          for k in h.keys()}, {"format": "pt"})  # noqa: SIM118
    for f in weights.model_dir.iterdir():
        if f.name in AUX_FILES or f.name.endswith(".safetensors.index.json"):
            out[f.name] = f.read_bytes()
    return out


@pytest.mark.parametrize("n", [2, MIN_DELTAS + 3])
def test_exported_files_are_the_reference_materialisation_byte_for_byte(repo, tmp_path, n):
    # every file, cold (computed; a long history's state then cached) and again (read back from
    # the cache where there is one): weights streamed, copied file to file or read from the
    # cache must come out as the plain sum written in one piece
    _history(repo, n)
    want = _reference_directory(repo, "HEAD")
    exports = []
    for label in ("cold", "again"):
        out = tmp_path / label
        Repository.open(repo.dir).export("HEAD", out)
        got = {f.name: f.read_bytes() for f in out.iterdir()}
        assert set(got) == set(want) | {"nmkevc.json", "README.md"}, label
        for name, data in want.items():
            assert got[name] == data, (label, name)
        exports.append(got)
    assert exports[0] == exports[1]  # the card and provenance too
    assert len(list(repo.plumbing.materialised.dir.glob("*.safetensors"))) == (n >= MIN_DELTAS)


def test_short_history_writes_no_cache(repo, tmp_path):
    _history(repo, 2)
    repo.export("HEAD", tmp_path / "out")
    assert not list(repo.plumbing.materialised.dir.glob("*.safetensors"))


_BLOCK = """
import sys
class Block:
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("torch", "transformers", "networkx"):
            raise ImportError("this verb must not import " + name)
sys.meta_path.insert(0, Block())
from nmkevc.cli.app import run
sys.argv = ["nmkevc", *sys.argv[1:]]
run()
"""


def test_ref_verbs_run_without_torch(repo):
    repo.commit_delta(random_delta(repo, seed=1), "one", [EditRequest.from_json(request("A", "B"))])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def cli(*args):
        return subprocess.run([sys.executable, "-c", _BLOCK, "-C", str(repo.root), *args], env=env,
                              capture_output=True, text=True)

    for args in (["checkout", "HEAD~1"], ["checkout", "main"], ["branch", "x"], ["switch", "x"], ["tag", "t"]):
        r = cli(*args)
        assert r.returncode == 0, (args, r.stdout, r.stderr)
    assert repo.head().branch == "x"


def test_fresh_model_of_a_long_history_is_the_reference_sum_cached_or_not(repo):
    commits = _history(repo, MIN_DELTAS + 1)
    edited = sorted(repo.plumbing.plan(repo.resolve()))

    def model_bytes(r, rev="HEAD"):
        state = r.load_model(rev)
        return {state.weights.resolve(k): state.model.get_parameter(k).detach().contiguous().view(torch.uint8)
                .numpy().tobytes() for k in edited}

    def ref(rev):
        return {k: v for k, v in _reference_tensors(repo, rev).items() if k in {repo.workbench.base_model(
            repo.commit().base).weights.resolve(n) for n in edited}}

    want = ref("HEAD")

    cold = Repository.open(repo.dir)
    assert model_bytes(cold) == want  # computed, and cached for the next process
    assert len(list(repo.plumbing.materialised.dir.glob("*.safetensors"))) == 1
    assert model_bytes(Repository.open(repo.dir)) == want  # from the cache
    # moving the live model afterwards rewrites what changed, exactly
    assert model_bytes(cold, commits[-2]) == ref(commits[-2])


def test_export_of_a_long_history_needs_no_torch_cold_or_cached(repo, tmp_path):
    # the first export of a long history reads the deltas' factors and sums them with numpy; the
    # second reads the materialised cache; both copy the rest of the base file to file. Neither
    # fresh process imports torch, and both write the reference bytes
    _history(repo, MIN_DELTAS + 1)
    want = _reference_directory(repo, "HEAD")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    got = {}
    for label in ("cold", "warm"):
        r = subprocess.run([sys.executable, "-c", _BLOCK, "-C", str(repo.root), "export", "HEAD",
                            str(tmp_path / label)], env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert len(list(repo.plumbing.materialised.dir.glob("*.safetensors"))) == 1, label
        got[label] = {p.name: p.read_bytes() for p in (tmp_path / label).iterdir()}
        for name, data in want.items():
            assert got[label][name] == data, (label, name)
    assert got["cold"] == got["warm"]


def test_a_bfloat16_base_is_summed_as_before(tmp_path):
    # numpy has no bfloat16: such a base's weights are cast by torch, to the same bytes as the definition
    import tiny
    from transformers import AutoModelForCausalLM

    base = tiny.make_model_dir(tmp_path / "base")
    AutoModelForCausalLM.from_pretrained(base).to(torch.bfloat16).save_pretrained(base)
    repo = Repository.init(tmp_path / "repo", base=str(base))
    weights = repo.workbench.base_model(repo.commit().base).weights
    assert {s.dtype for s in weights.specs()} == {"bfloat16"}
    _history(repo, 3)
    got = _export_tensors(repo, "HEAD", tmp_path / "out")
    assert got == _reference_tensors(repo, "HEAD")


def test_an_edit_on_a_long_history_leaves_its_state_cached(repo, tmp_path):
    # the edit's checks ran on the committed state: its weights go to the cache, and the first
    # export reads them back (the same bytes as the reference sum, without recomputing)
    _history(repo, MIN_DELTAS)
    repo.edit(EditRequest("France", "The capital of {} is", "Rome"), method="memit", stats_tokens=200,
              z_lr=0.5, z_steps=5, z_clamp=4.0, z_weight_decay=0.0, layers=[1, 2])
    plumbing = repo.plumbing
    key = plumbing.state_key(repo.commit().base, repo.effective("HEAD"))
    assert plumbing.materialised.get(key) is not None
    assert _export_tensors(Repository.open(repo.dir), "HEAD", tmp_path / "out") == _reference_tensors(repo, "HEAD")
