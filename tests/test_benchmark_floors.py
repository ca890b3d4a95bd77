"""benchmarks/floors.py: the FLOP and exponential counts of each phase against hand counts, and
benchmarks/editing.py's phase table from them (keys timed inside the update or on their own)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _bench(name: str):
    sys.path.insert(0, str(ROOT / "benchmarks"))  # as when the scripts run (editing.py imports floors)
    try:
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod  # its dataclasses look themselves up there
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


fl = _bench("floors")

#: d_model 4, d_ff 8, 3 layers, 2 heads of 2, vocabulary 10, 100 weights per layer
SHAPE = fl.ModelShape(d_model=4, d_ff=8, n_layers=3, n_heads=2, head_dim=2, vocab=10, linear_per_layer=100)
#: 2 requests × 2 templates; subjects end at 2, 1, 3, 0 (rewrite rows 0 and 2)
PROMPTS = fl.PromptGeometry(lengths=[6, 4, 5, 3], subject_pos=[2, 1, 3, 0], n_templates=2)
RATES = fl.Rates(float32={"a": 2.0}, float64={"b": 1.0}, exp={"c": 0.5})


def test_model_shape_of_smollm2_config():
    cfg = {"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
           "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152}
    s = fl.ModelShape.from_config(cfg)
    # q, o: 576 × 576; k, v: 576 × 192; gate, up, down: 576 × 1536
    assert s.linear_per_layer == 2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536
    assert (s.head_dim, s.d_ff, s.n_layers, s.vocab) == (64, 1536, 30, 49152)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gptj", "gpt_neox"])
def test_model_shape_counts_every_product_of_a_layer(arch):
    """From the config alone, the weights a token meets in one decoder layer's matrix products."""
    import torch
    from tiny import make_config
    from transformers import AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D

    cfg = make_config(arch, vocab_size=64)
    model = AutoModelForCausalLM.from_config(cfg)
    layer = next(m for m in model.modules() if isinstance(m, torch.nn.ModuleList))[0]
    weights = sum(m.weight.numel() for m in layer.modules() if isinstance(m, torch.nn.Linear | Conv1D))
    assert fl.ModelShape.from_config(cfg.to_dict()).linear_per_layer == weights


def test_z_count_by_hand():
    rows = fl.ZGeometry(lengths=[5, 3], subject_pos=[2, 1], request=[0, 0], packs=[[0, 1]], reads=[2])
    c = fl.z_count(SHAPE, rows, steps=[3], top_layer=0)
    # pack width max(5-2, 3-1) = 3; 2 rows × 3 positions × 3 steps = 18 token-steps over 2 upper layers
    assert c.detail["rerun_token_steps"] == 18 and c.detail["upper_layers"] == 2
    assert c.part("layers") == 2 * (2 * 100 * 18 * 2)  # forward + input gradient
    # pairs: each re-run position attends over its whole row: 3·3·5 + 3·3·3 = 72
    assert c.part("attention") == 2 * (2 * 2 * 2 * 2 * 72 * 2)
    assert c.part("unembedding") == 2 * (2 * 4 * 10 * 2 * 3)
    assert c.flops == 14400 + 4608 + 960 and c.exps == 0


def test_keys_count_by_hand():
    c = fl.keys_count(SHAPE, PROMPTS, layers=[1, 2])
    # rows cut after the subject: 3, 2, 4, 1 tokens (pairs 6, 3, 10, 1); rewrite rows 0, 2: 7 tokens, 16 pairs
    # all rows: layers 0..1, then layer 2 alone = 3 layer passes; rewrite rows: 0..2 once, nothing above
    # l_m = 2 after its keys = 3
    assert (c.detail["layer_passes_all_rows"], c.detail["layer_passes_rewrite_rows"]) == (3, 3)
    assert c.part("layers") == 2 * 100 * 10 * 3 + 2 * 100 * 7 * 3
    assert c.part("attention") == 16 * 20 * 3 + 16 * 16 * 3


def test_attribution_count_exact_and_moments_by_hand():
    c = fl.attribution_count(SHAPE, PROMPTS, layers=[1, 2])
    # forward: 18 tokens (52 causal pairs) through 3 layers, the top token's logits for 4 prompts
    assert c.part("forward") == 2 * 100 * 18 * 3 + 16 * 52 * 3 + 2 * 4 * 4 * 10
    assert c.part("B") == 2 * 2 * 10 * 4 * 8
    assert c.part("base logits") == 2 * 2 * 4 * 4 * 10 + 2 * 2 * 4 * 4 * 8
    assert c.part("perturbed logits") == 2 * 2 * 4 * 8 * 10
    assert c.exps == 2 * (4 * 8 * 10 + 4 * 10) and c.detail["form"] == "exact"
    m = fl.attribution_count(SHAPE, PROMPTS, layers=[1, 2], moments_min=3, order=2)
    assert m.part("moments") == 2 * 2 * 2 * 4 * 10 * 8 and m.part("powers") == 2 * 1 * 10 * 8
    assert m.part("perturbed logits") == 0 and m.exps == 2 * 4 * 10 and m.detail["form"] == "moments"


def test_update_count_by_hand():
    c = fl.update_count("nullspace", d_model=4, d_ff=8, n=1, kept=[8, 8])
    # per layer: P K 2·8·8, ridge 2·8, push-through Gram 2·1·8, LU 2/3, solve 2·1·8; write 2·4·8 in float32
    assert c.by_precision()["float64"] == pytest.approx(2 * (128 + 16 + 16 + 2 / 3 + 16))
    assert c.by_precision()["float32"] == 2 * 64
    memit = fl.update_count("memit", 4, 8, 1, [8])
    assert memit.by_precision()["float64"] == pytest.approx(128 + 2 * 512 / 3 + 128)
    prior = fl.update_count("nullspace", 4, 8, 1, [8], prior=True)
    assert prior.by_precision()["float64"] == pytest.approx(128 + 16 + 128 + 2 * 512 + 2 * 512 / 3 + 128)
    comp = fl.update_count("compensated", 4, 8, 1, [3])
    assert comp.by_precision()["float64"] == pytest.approx(128 + 16 + 6 + 2 / 3 + 6)
    assert comp.by_precision()["float32"] == 2 * 4 * 3
    weighted = fl.update_count("weighted", 4, 8, 1, [3])  # MEMIT's solve on the mask's 3 rows
    assert weighted.by_precision()["float64"] == pytest.approx(18 + 2 * 27 / 3 + 18)
    with pytest.raises(ValueError):
        fl.update_count("unknown", 4, 8, 1, [8])


def test_method_forms():
    assert fl.method_form("alphaedit") == "nullspace" and fl.method_form("memit") == "memit"
    assert fl.method_form("nmke", "published") == "nullspace"
    assert fl.method_form("nmke", "compensated") == "compensated"
    assert fl.method_form("nmke", "weighted") == "weighted"
    assert fl.method_form("someone-elses") is None


def test_z_step_tokens_are_every_pack_at_its_width():
    rows = fl.ZGeometry(lengths=[5, 3, 7, 4], subject_pos=[2, 1, 1, 0], request=[0, 0, 1, 1],
                        packs=[[0, 1], [2, 3]], reads=[2, 2])
    # widths max(3, 2) = 3 and max(6, 4) = 6: 2·3 + 2·6 rows a step's products carry
    assert fl.z_step_tokens(rows) == 18
    assert fl.z_count(SHAPE, rows, steps=[1, 1], top_layer=0).detail["step_tokens"] == 18


def test_floor_with_a_part_at_its_own_rate():
    c = fl.PhaseCount("z", [fl.Work("layers", 4e9), fl.Work("unembedding", 2e9)])
    assert c.floor_seconds(RATES) == pytest.approx(3.0)  # both at 2 GFLOP/s
    assert c.floor_seconds(RATES, {"layers": 0.5}) == pytest.approx(8.0 + 1.0)


def test_step_floor_only_below_the_measured_rows(monkeypatch):
    monkeypatch.setattr(fl, "step_rate", lambda *a, **k: 0.5)
    c = fl.PhaseCount("z", [fl.Work("layers", 4e9)], detail={"step_tokens": 42})
    z = fl.figures(9.0, c, RATES)
    fl.add_step_floor(z, c, RATES, 4, 8, largest=256)
    assert (z.step_tokens, z.step_rate_gflops) == (42, 0.5)
    assert z.step_floor_seconds == pytest.approx(8.0) and z.step_ratio == pytest.approx(1.12)
    assert z.ratio == pytest.approx(4.5)  # the floor at the best rate stands beside it
    wide = fl.figures(9.0, c, RATES)
    fl.add_step_floor(wide, c, RATES, 4, 8, largest=42)  # a step as large as the rates' rows: nothing added
    assert wide.step_ratio is None and "step_ratio" not in wide.to_json()


def test_floor_is_each_precision_at_its_rate_plus_exponentials():
    c = fl.PhaseCount("x")
    c.add("a", 4e9)  # float32 at 2 GFLOP/s: 2 s
    c.add("b", 3e9, "float64")  # 1 GFLOP/s: 3 s
    c.exps = 1e9  # 0.5 G/s: 2 s
    assert c.floor_seconds(RATES) == pytest.approx(7.0)
    c.add("c", 1.0, "float16")  # no rate measured: no floor
    assert c.floor_seconds(RATES) is None


def _counts():
    z = fl.PhaseCount("z", [fl.Work("layers", 2e9)])
    keys = fl.PhaseCount("keys", [fl.Work("layers", 1e9)])
    update = fl.PhaseCount("update", [fl.Work("solve", 1e9, "float64")])
    return fl.CaseCounts(z, keys, None, update)


def test_phase_figures_keys_inside_update_before_the_split():
    ph = fl.phase_figures({"z": 4.0, "update": 3.0}, wall=10.0, counts=_counts(), rates=RATES)
    assert ph["keys"].inside == "update" and ph["keys"].seconds is None
    assert ph["update"].includes == ["keys"]
    assert ph["update"].floor_seconds == pytest.approx(0.5 + 1.0)  # keys at 2 GFLOP/s + solve at 1
    assert ph["update"].ratio == pytest.approx(2.0)
    assert ph["z"].ratio == pytest.approx(4.0) and ph["z"].achieved_gflops == pytest.approx(0.5)
    assert ph["commit"].seconds == pytest.approx(3.0) and ph["commit"].floor_seconds is None
    assert ph["maths"].floor_seconds == pytest.approx(2.5) and "attribution" not in ph


def test_phase_figures_split_the_exponentials_out():
    attr = fl.PhaseCount("attribution", [fl.Work("B", 2e9)], exps=1e9)
    counts = fl.CaseCounts(*(_counts().phases()[k] for k in ("z", "keys")), attr, _counts().update)
    ph = fl.phase_figures({"z": 4.0, "attribution": 6.0, "keys": 1.0, "update": 2.0}, 14.0, counts, RATES)
    assert ph["attribution"].floor_seconds == pytest.approx(1.0 + 2.0)  # 2 GFLOP at 2 GFLOP/s, 1 G exp at 0.5 G/s
    assert ph["attribution"].floor_exp_seconds == pytest.approx(2.0) and ph["attribution"].ratio == pytest.approx(2.0)
    assert ph["maths"].floor_seconds == pytest.approx(5.5) and ph["commit"].seconds == pytest.approx(1.0)


def test_phase_figures_keys_on_their_own():
    ph = fl.phase_figures({"z": 4.0, "keys": 1.0, "update": 2.0}, wall=10.0, counts=_counts(), rates=RATES)
    assert ph["keys"].inside is None and ph["keys"].ratio == pytest.approx(2.0)
    assert ph["update"].includes == [] and ph["update"].floor_seconds == pytest.approx(1.0)
    assert ph["maths"].seconds == pytest.approx(7.0) and ph["maths"].floor_seconds == pytest.approx(2.5)


def _row(phases=None, **kw):
    row = {"case": "edit", "method": "nmke", "n": 1, "label": "after", "commit": "abc", "runs": 1, "seconds": 10.0,
           "maths_seconds": 7.0, "timings": {"z": 4.0, "update": 3.0}, "peak_mib": 1000, "efficacy": 1.0,
           "p_after": 0.5, "mask_fraction": 0.5, "load": [[1.0, 1.2]], **kw}
    if phases is not None:
        row["phases"] = {k: v.to_json() for k, v in phases.items()}
        row["rates"] = [RATES.to_json()]
    return row


def test_editing_table_says_when_no_row_has_floors(tmp_path):
    ed = _bench("editing")
    path = tmp_path / "editing.json"
    path.write_text(json.dumps({"rows": [_row()]}))
    text = ed.markdown(path)
    assert "no row of [editing.json](figures/editing.json) carries per-phase floors yet" in text
    assert "| 0.500 |" in text  # P(new) beside the times


def test_editing_phase_table_marks_keys_inside_update(tmp_path):
    ed = _bench("editing")
    before = fl.phase_figures({"z": 4.0, "update": 3.0}, 10.0, _counts(), RATES)
    after = fl.phase_figures({"z": 4.0, "keys": 1.0, "update": 2.0}, 10.0, _counts(), RATES)
    path = tmp_path / "editing.json"
    path.write_text(json.dumps({"rows": [_row(before), _row(after, label="split",
                                                             timings={"z": 4.0, "keys": 1.0, "update": 2.0})]}))
    text = ed.markdown(path)
    lines = [x for x in text.splitlines() if x.startswith("| nmke, 1 fact")]
    assert len(lines) == 4  # two in the runs table, two in the phase table
    assert "| 4.0 / 0.0 / 3.0 |" in lines[1]  # the split row's update carries its keys in the runs table
    assert "3.00 / 1.50 (2.0×)*" in lines[2] and "in update" in lines[2]
    assert "1.00 / 0.50 (2.0×)" in lines[3] and "2.00 / 1.00 (2.0×)" in lines[3]
    assert "timed inside the update" in text


def test_editing_phase_table_shows_z_at_its_step_rows(tmp_path):
    ed = _bench("editing")
    ph = fl.phase_figures({"z": 4.0, "keys": 1.0, "update": 2.0}, 10.0, _counts(), RATES)
    ph["z"].step_tokens, ph["z"].step_ratio = 42, 1.6
    path = tmp_path / "editing.json"
    path.write_text(json.dumps({"rows": [_row(ph, timings={"z": 4.0, "keys": 1.0, "update": 2.0})]}))
    assert "4.00 / 1.00 (4.0×; 1.6× at 42-row products)" in ed.markdown(path)
