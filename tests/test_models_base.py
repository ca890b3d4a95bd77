"""A base identified by content (models/manifest.py) and found where it lives (models/source.py),
checked against independent readings of the files."""

import hashlib
import json
import shutil
import struct

import pytest

from nmkevc.errors import NmkevcError
from nmkevc.models.manifest import BaseManifest, build_manifest
from nmkevc.models.source import EMBEDDED_NAME, BaseSource, parse_base_argument, resolve_dir


def raw_tensor_hashes(path) -> dict[str, tuple[str, str, list[int]]]:
    """name → (sha256 of the stored bytes, dtype code, shape), read from the safetensors
    layout itself: an 8-byte little-endian header length, a JSON header, then the data."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    body = data[8 + n :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        out[name] = (hashlib.sha256(body[begin:end]).hexdigest(), info["dtype"], info["shape"])
    return out


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_manifest_hashes_every_tensor_as_stored(model_dirs, arch):
    d = model_dirs[arch]
    m = build_manifest(d)
    want = {}
    for f in sorted(d.glob("*.safetensors")):
        want.update(raw_tensor_hashes(f))
    assert set(m.tensors) == set(want) and want
    for name, (sha, _dtype, shape) in want.items():
        assert m.tensors[name]["sha256"] == sha and m.tensors[name]["shape"] == shape
    assert m.architecture == arch and m.model_type == arch
    assert BaseManifest.from_bytes(m.to_bytes()) == m


def test_manifest_is_content_not_place(model_dirs, tmp_path):
    a = build_manifest(model_dirs["llama"])
    copy = tmp_path / "copy"
    shutil.copytree(model_dirs["llama"], copy)
    cfg = json.loads((copy / "config.json").read_text())
    cfg["_name_or_path"] = "/somewhere/else"  # where it was written is not what it is
    (copy / "config.json").write_text(json.dumps(cfg))
    assert build_manifest(copy).to_bytes() == a.to_bytes()
    # a changed tokenizer file is another base
    tok = copy / "tokenizer.json"
    tok.write_text(tok.read_text() + " ")
    assert build_manifest(copy).tokenizer_sha256 != a.tokenizer_sha256
    # so is one changed byte of one tensor
    f = next(copy.glob("*.safetensors"))
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    changed = [n for n, t in build_manifest(copy).tensors.items() if t != a.tensors[n]]
    assert len(changed) == 1


def test_manifest_hash_cache_skips_unchanged_files(model_dirs, monkeypatch):
    import nmkevc.models.manifest as manifest

    cache: dict = {}
    first = build_manifest(model_dirs["gpt2"], hash_cache=cache)
    assert cache

    def no_hashing(_t):
        raise AssertionError("an unchanged file was hashed again")

    monkeypatch.setattr(manifest, "tensor_sha256", no_hashing)
    assert build_manifest(model_dirs["gpt2"], hash_cache=cache) == first


def test_parse_base_argument(tmp_path):
    assert parse_base_argument(None) == BaseSource("embedded", EMBEDDED_NAME)
    assert parse_base_argument(str(tmp_path)) == BaseSource("local", str(tmp_path.resolve()))
    assert parse_base_argument("org/model-1.5", "abc") == BaseSource("hub", "org/model-1.5", "abc")
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(NmkevcError, match="not a directory"):
        parse_base_argument(str(f))
    for bad in ("no-such-dir", "./missing/dir", "a/b/c"):
        with pytest.raises(NmkevcError, match="no such directory"):
            parse_base_argument(bad)


def test_base_source_json_and_description():
    hub = BaseSource("hub", "org/m", "v1")
    assert hub.to_json() == {"kind": "hub", "location": "org/m", "revision": "v1"}
    assert BaseSource.from_json(hub.to_json()) == hub
    assert BaseSource("local", "/x").to_json() == {"kind": "local", "location": "/x"}
    assert hub.describe() == "org/m@v1" and BaseSource("embedded", "M").describe() == "embedded M"


def test_resolve_dir_local_and_errors(tmp_path):
    assert resolve_dir(BaseSource("local", str(tmp_path))) == tmp_path
    with pytest.raises(NmkevcError, match="base relocate"):
        resolve_dir(BaseSource("local", str(tmp_path / "gone")))
    with pytest.raises(NmkevcError, match="unknown base source kind"):
        resolve_dir(BaseSource("ftp", "x"))
