import os

import pytest
import torch

from nmkevc import tensorio
from nmkevc.errors import CorruptObjectError, ObjectNotFoundError, RefError, RepositoryLockedError
from nmkevc.storage.fsutil import atomic_write
from nmkevc.storage.lock import RepoLock
from nmkevc.storage.objects import canonical_json, decode, encode, object_id
from nmkevc.storage.refs import RefStore, check_ref_name
from nmkevc.storage.store import ObjectStore


def test_object_roundtrip_and_identity(tmp_path):
    store = ObjectStore(tmp_path / "objects")
    oid = store.put("commit", b'{"a":1}')
    assert oid == object_id(encode("commit", b'{"a":1}'))
    assert store.put("commit", b'{"a":1}') == oid  # idempotent
    assert store.get(oid, "commit") == b'{"a":1}'
    assert store.kind(oid) == "commit"
    assert list(store) == [oid]
    assert store.resolve_prefix(oid[:6]) == [oid]
    # the kind is hashed: the same payload as another kind is another object
    assert store.put("blob", b'{"a":1}') != oid


def test_wrong_kind_and_missing(tmp_path):
    store = ObjectStore(tmp_path / "objects")
    oid = store.put("blob", b"x")
    with pytest.raises(CorruptObjectError):
        store.get(oid, "commit")
    with pytest.raises(ObjectNotFoundError):
        store.get("0" * 64)


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage"])
def test_corrupt_object_detected(tmp_path, damage):
    store = ObjectStore(tmp_path / "objects")
    oid = store.put("blob", b"hello world" * 100)
    p = store.path(oid)
    os.chmod(p, 0o644)
    data = bytearray(p.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
    elif damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data = bytearray(b"not zstd at all")
    p.write_bytes(bytes(data))
    with pytest.raises(CorruptObjectError):
        store.get(oid)


def test_decode_rejects_bad_header():
    with pytest.raises(CorruptObjectError):
        decode(b"commit 5\0abc")
    with pytest.raises(CorruptObjectError):
        decode(b"nonsense")


def test_canonical_json_is_canonical():
    assert canonical_json({"b": 1, "a": [1, 2]}) == canonical_json({"a": [1, 2], "b": 1})
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    p = tmp_path / "f"
    atomic_write(p, b"old")

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(p, b"new")
    assert p.read_bytes() == b"old"
    assert [x.name for x in tmp_path.iterdir()] == ["f"]  # no temp file left


def test_lock_excludes_second_writer(tmp_path):
    a, b = RepoLock(tmp_path / "lock"), RepoLock(tmp_path / "lock")
    with a:
        with a:  # re-entrant for the holder
            pass
        with pytest.raises(RepositoryLockedError, match="locked"):
            b.acquire()
    b.acquire()
    b.release()


def test_refs_head_and_reflog(tmp_path):
    refs = RefStore(tmp_path)
    oid = "a" * 64
    refs.set("refs/heads/main", oid, "first")
    refs.set_head_branch("main", "switch")
    assert refs.head().branch == "main" and refs.head().commit == oid
    refs.update_head("b" * 64, "advance")
    assert refs.read("refs/heads/main") == "b" * 64
    refs.set_head_detached(oid, "detach")
    assert refs.head().branch is None and refs.head().commit == oid
    # a torn reflog line (crash mid-append) is skipped
    with open(tmp_path / "logs" / "HEAD", "a") as fh:
        fh.write('{"old": "x", "ne')
    assert [e.message for e in refs.reflog("HEAD")][-1] == "detach"
    with pytest.raises(RefError):
        refs.set("refs/heads/x", "not-an-id", "bad")


@pytest.mark.parametrize("name", ["", "a..b", "-x", "a b", "x.lock", "HEAD", "a~1", "a^", "x/"])
def test_bad_ref_names(name):
    with pytest.raises(RefError):
        check_ref_name(name)


def test_tensorio_canonical_and_readable(tmp_path):
    from safetensors.torch import load_file

    t = {"b": torch.arange(6, dtype=torch.float32).reshape(2, 3), "a": torch.tensor([1, 2], dtype=torch.int64)}
    raw = tensorio.dumps(t, {"k": "v"})
    assert raw == tensorio.dumps(dict(reversed(list(t.items()))), {"k": "v"})
    back, meta = tensorio.loads(raw)
    assert meta == {"k": "v"} and torch.equal(back["b"], t["b"]) and torch.equal(back["a"], t["a"])
    (tmp_path / "x.safetensors").write_bytes(raw)
    assert torch.equal(load_file(tmp_path / "x.safetensors")["b"], t["b"])


def _raw_safetensors(header: dict, data: bytes) -> bytes:
    import json
    import struct

    body = json.dumps(header).encode()
    return struct.pack("<Q", len(body)) + body + data


_F32 = {"dtype": "F32", "shape": [2]}
BAD_FILES = {
    "overlap": ({"a": {**_F32, "data_offsets": [0, 8]}, "b": {**_F32, "data_offsets": [4, 12]}}, bytes(12)),
    "gap": ({"a": {**_F32, "data_offsets": [0, 8]}, "b": {**_F32, "data_offsets": [12, 20]}}, bytes(20)),
    "trailing bytes": ({"a": {**_F32, "data_offsets": [0, 8]}}, bytes(12)),
    "truncated": ({"a": {**_F32, "data_offsets": [0, 8]}}, bytes(4)),
    "metadata not text": ({"__metadata__": {"k": 1}, "a": {**_F32, "data_offsets": [0, 8]}}, bytes(8)),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_loads_refuses_what_safetensors_refuses(case):
    from safetensors.torch import load

    raw = _raw_safetensors(*BAD_FILES[case])
    with pytest.raises(Exception):  # noqa: B017 - the library's own error type, whichever it is
        load(raw)
    with pytest.raises(ValueError):
        tensorio.loads(raw)


def test_loads_gives_views_of_one_copy_and_only_the_tensors_wanted():
    import io

    # a/idx follows 3 float32s, so its int64s are not 8-aligned in the bytes: it is read as a copy
    t = {"a/K": torch.arange(4, dtype=torch.float32), "a/U": torch.arange(6, dtype=torch.float64).reshape(2, 3),
         "a/V": torch.arange(3, dtype=torch.float32), "a/idx": torch.tensor([1, 4], dtype=torch.int64),
         "e": torch.zeros(0, 2)}
    raw = tensorio.dumps(t)
    back, _ = tensorio.loads(raw, lambda name: not name.endswith("/K"))
    assert sorted(back) == ["a/U", "a/V", "a/idx", "e"]
    assert all(torch.equal(back[k], t[k]) and back[k].dtype == t[k].dtype for k in back)
    assert back["a/idx"].data_ptr() % 8 == 0
    offsets = {name: offset for name, (_, offset) in tensorio.read_layout(io.BytesIO(raw)).tensors.items()}
    assert back["a/V"].data_ptr() - back["a/U"].data_ptr() == offsets["a/V"] - offsets["a/U"]  # one buffer
    back["a/U"][0, 0] = 7.0  # writable, and the caller's bytes are untouched
    assert tensorio.loads(raw)[0]["a/U"][0, 0] == 0.0


def _two_tensor_file(tmp_path):
    t = {"w": torch.arange(12, dtype=torch.float32).reshape(3, 4), "b": torch.arange(5, dtype=torch.bfloat16)}
    path = tmp_path / "src.safetensors"
    path.write_bytes(tensorio.dumps(t, {"format": "pt"}))
    return t, path


def test_layout_is_read_without_torch_and_locates_every_tensor(tmp_path):
    t, path = _two_tensor_file(tmp_path)
    with open(path, "rb") as fh:
        layout = tensorio.read_layout(fh)
    assert layout.metadata == {"format": "pt"} and layout.size == path.stat().st_size
    data = path.read_bytes()
    for name, tensor in t.items():
        spec, offset = layout.tensors[name]
        assert spec == tensorio.TensorSpec(name, tensorio.dtype_name(tensor.dtype), tuple(tensor.shape))
        assert data[offset : offset + spec.nbytes] == tensorio.tensor_bytes(tensor)


@pytest.mark.parametrize("damage", ["short", "not-json", "offsets", "dtype", "negative"])
def test_layout_rejects_a_damaged_header(damage):
    import io
    import json
    import struct

    entry = {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}
    if damage == "offsets":
        entry["data_offsets"] = [0, 12]
    if damage == "dtype":
        entry["dtype"] = "F8_E4M3"
    if damage == "negative":  # a negative size whose offsets run backwards by as much
        entry.update(shape=[-1], data_offsets=[8, 4])
    body = b"{nope" if damage == "not-json" else json.dumps({"w": entry}).encode()
    raw = struct.pack("<Q", len(body)) + body
    if damage == "short":
        raw = raw[:-2]
    with pytest.raises(ValueError):
        tensorio.read_layout(io.BytesIO(raw))


@pytest.mark.parametrize("kernel_copy", [True, False])
def test_streaming_writes_buffers_and_file_ranges_alike(tmp_path, monkeypatch, kernel_copy):
    # the same file whether a tensor's bytes come as a buffer or as a range copied from another file
    t, src = _two_tensor_file(tmp_path)
    if not kernel_copy:  # a file system (or OS) without copy_file_range: the read/write fallback
        def refuse(*a, **k):
            raise OSError(18, "cross-device")

        monkeypatch.setattr(tensorio.os, "copy_file_range", refuse)
    with open(src, "rb") as fh:
        layout = tensorio.read_layout(fh)
    specs = [layout.tensors[n][0] for n in sorted(t)]
    out = tmp_path / "out.safetensors"
    with open(out, "wb", buffering=0) as fh:
        tensorio.write_streaming(fh.fileno(), specs,
                                 lambda s: tensorio.ByteRange(src, layout.tensors[s.name][1], s.nbytes)
                                 if s.name == "w" else tensorio.tensor_buffer(t[s.name]),
                                 metadata={"format": "pt"})
    assert out.read_bytes() == src.read_bytes()
    with open(tmp_path / "bad.safetensors", "wb", buffering=0) as fh, pytest.raises(ValueError):
        tensorio.write_streaming(fh.fileno(), specs, lambda s: b"\0" * (s.nbytes - 1))


@pytest.mark.parametrize("late", [{"w"}, {"b"}, {"w", "b"}])
def test_overwriting_a_tensor_in_place_gives_the_file_written_with_it(tmp_path, late):
    # an export copies the base's file whole, then writes the edited tensors over their places:
    # the same bytes as writing them in order; a wrong size or an unknown name is refused
    t, src = _two_tensor_file(tmp_path)
    edited = {n: (v + 1 if v.dtype == torch.float32 else v * 2) for n, v in t.items()}
    want = tmp_path / "want.safetensors"
    want.write_bytes(tensorio.dumps({n: edited[n] if n in late else v for n, v in t.items()}, {"format": "pt"}))
    out = tmp_path / "out.safetensors"
    out.write_bytes(src.read_bytes())
    with open(out, "r+b", buffering=0) as fh:
        tensorio.overwrite_tensors(fh, {n: tensorio.tensor_buffer(edited[n]) for n in late})
    assert out.read_bytes() == want.read_bytes()
    with open(out, "r+b", buffering=0) as fh, pytest.raises(ValueError, match="does not match"):
        tensorio.overwrite_tensors(fh, {"w": b"\0" * 4})
    with open(out, "r+b", buffering=0) as fh, pytest.raises(ValueError, match="no tensor"):
        tensorio.overwrite_tensors(fh, {"nope": b""})
