"""Figures in docs/benchmarks.md come from the committed JSON files, never typed by hand."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _bench(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _block(doc: Path, begin: str, end: str) -> str:
    return doc.read_text().split(begin, 1)[1].split(end, 1)[0].strip("\n")


def test_z_floor_block_is_generated_from_its_json():
    mod = _bench("z_floor")
    data = json.loads(mod.DEFAULT_OUT.read_text()) if mod.DEFAULT_OUT.exists() else None
    assert _block(mod.DOC, mod.BEGIN, mod.END) == mod.markdown(data)


def test_z_profile_block_is_generated_from_its_json():
    mod = _bench("z_profile")
    data = json.loads(mod.DEFAULT_OUT.read_text()) if mod.DEFAULT_OUT.exists() else None
    assert _block(mod.DOC, mod.BEGIN, mod.END) == mod.markdown(data)


def test_z_profile_text_states_what_the_run_measured():
    mod = _bench("z_profile")
    run = {"date": "2026-01-01", "machine": "m", "load_before": 0.1, "load_after": 0.2, "threads": 2, "facts": 3,
           "steps": 2, "templates": 6, "pack_tokens": 256, "peak_mib": 900, "seconds": 9.5,
           "profiled_seconds": 10.0, "product_share": 0.7, "product_gflops": 100.0, "best_gflops": 150.0,
           "rates_gflops": {"a": 150.0},
           "floor_ratio_estimate": 2.14, "floor_ratio_products_only": 1.5,
           "top_ops": [{"op": "aten::mm", "share": 0.7, "calls": 4}]}
    text = mod.markdown({"runs": [run]})
    assert "**70%**" in text and "**100.0 GFLOP/s**" in text and "2.14×" in text and "1.5×" in text
    assert "mm 70.0%" in text
    assert mod.markdown(None).startswith("No profile")


def test_editing_table_is_generated_from_its_json():
    mod = _bench("editing")
    body = mod.markdown(mod.DEFAULT_OUT) + "\n\n" + mod.ratios(mod.DEFAULT_OUT)
    assert _block(mod.DOC, mod.BEGIN, mod.END) == body.strip("\n")


def test_method_tables_are_generated_from_their_json():
    """docs/method.md's step-4 sweeps (λ, null space) quote their committed JSON files."""
    for name in ("ridge", "nullspace"):
        mod = _bench(name)
        assert mod.DEFAULT_OUT.exists(), f"{mod.DEFAULT_OUT} is quoted by {mod.DOC} but missing"
        assert _block(mod.DOC, mod.BEGIN, mod.END) == mod.table(json.loads(mod.DEFAULT_OUT.read_text()))


def test_lifelong_dev_block_in_method_md_is_generated_from_its_json():
    mod = _bench("lifelong")
    results, doc = ROOT / "docs" / "results" / "lifelong-countryinfo-dev-T300-B100", ROOT / "docs" / "method.md"
    begin, end = mod.doc_markers(results, doc)
    assert _block(doc, begin, end) == mod.results_block(results, doc).strip("\n")


def test_view_page_sizes_in_the_docs_are_the_measured_ones():
    data = json.loads((ROOT / "docs" / "figures" / "view.json").read_text())
    doc = (ROOT / "docs" / "view.md").read_text()
    for entry in data.values():
        assert f"{entry['bytes']:,}" in doc
    assert f"{data['synthetic-1000']['record_as_plain_json_bytes']:,}" in doc


def test_lifelong_blocks_in_results_md_are_generated_from_their_json():
    """Every committed lifelong run's results and diagnosis blocks in docs/results.md, headline or
    not, are what its results.json and diagnosis.json generate (a run's figures cannot drift)."""
    lifelong, diagnosis = _bench("lifelong"), _bench("lifelong_diagnosis")
    assert lifelong.HEADLINE == diagnosis.DEFAULT_RESULTS
    doc = lifelong.DOC
    text = doc.read_text()
    checked = 0
    for results in sorted((ROOT / "docs" / "results").iterdir()):
        begin, end = lifelong.doc_markers(results, doc)
        if begin in text:
            assert _block(doc, begin, end) == lifelong.results_block(results, doc).strip("\n")
            checked += 1
        begin, end = diagnosis.markers(results)
        if begin in text:
            data, res = diagnosis.read(results)
            assert _block(doc, begin, end) == diagnosis.markdown(data, res, f"results/{results.name}")
            checked += 1
    assert checked >= 2  # at least the headline's two blocks


def test_every_lifelong_label_says_what_its_arm_ran():
    """A lifelong arm is labelled by its settings over the defaults (`nmke:z_stop_top1=2`). When a
    default changes, an old label comes to mean something its arm never ran (and its reproduce
    command would run that): each committed run's labels, read with today's defaults, must give
    the hyperparameters its commits recorded (layers aside: the model resolves them)."""
    from nmkevc.editing.hparams import EditHparams, parse_arm

    checked = 0
    for path in sorted((ROOT / "docs" / "results").glob("*/results.json")):
        recorded = json.loads(path.read_text())["info"].get("hparams") or {}
        for label, rec in recorded.items():
            name, arm = parse_arm(label)
            today = EditHparams(method=name).updated(**arm).to_json()
            ran = EditHparams.from_json(rec).to_json()
            wrong = {k: (ran[k], today.get(k)) for k in ran if k != "layers" and ran[k] != today.get(k)}
            assert not wrong, f"{path.parent.name}: {label!r} ran {wrong} (recorded, today's reading)"
            checked += 1
    assert checked >= 10


def test_lifelong_records_how_its_threads_waited(monkeypatch):
    """A run under the bounded spin says so in its command (so it reproduces) and in its machine
    line (so its edit seconds are not read beside passive arms'); the passive default adds nothing."""
    from nmkevc.threads import wait_described

    mod = _bench("lifelong")
    monkeypatch.setattr("sys.argv", ["lifelong.py", "--edits", "20", "--batch", "10", "--wait", "bounded"])
    assert mod.command(mod.parse_args()).endswith("--wait bounded")
    monkeypatch.setattr("sys.argv", ["lifelong.py", "--edits", "20", "--batch", "10"])
    assert "--wait" not in mod.command(mod.parse_args())
    # the default results folder of another checkout (a run from a scratch copy of the code) is not
    # named; any other folder is
    for results, named in (("/elsewhere/docs/results/lifelong-countryinfo-T20-B10", False), ("/x/out", True)):
        monkeypatch.setattr("sys.argv", ["lifelong.py", "--edits", "20", "--batch", "10", "--results", results])
        assert ("--results" in mod.command(mod.parse_args())) == named
    assert wait_described({"GOMP_SPINCOUNT": "30000"}) == "GOMP_SPINCOUNT=30000"
    assert wait_described({}) == "libgomp's default"
