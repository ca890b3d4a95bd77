"""The corpus: shipped file, user files, and the fixed statistics / held-out split."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import zstandard

from nmkevc.corpus import CHUNK_MAX, CHUNK_MIN, Corpus, chunk_text, load_corpus
from nmkevc.errors import NmkevcError

DATA = Path(__file__).parent.parent / "nmkevc" / "data"


def _words(n: int, tag: str) -> str:
    return " ".join(f"{tag}{i}." if i % 12 == 11 else f"{tag}{i}" for i in range(n))


@pytest.fixture(scope="module")
def shipped() -> Corpus:
    return load_corpus()


def test_shipped_corpus_identity(shipped):
    """Checked against the file itself, read here without the loader: its id is the sha256
    of the decompressed text (the value nmkevc/data/README.md documents), one address a
    line with blank lines between, 1790 to 2021."""
    text = zstandard.ZstdDecompressor().decompressobj().decompress((DATA / "corpus.txt.zst").read_bytes())
    assert shipped.id == hashlib.sha256(text).hexdigest()
    assert shipped.id in (DATA / "README.md").read_text("utf-8")
    lines = text.decode("utf-8").strip().split("\n\n")
    assert shipped.name == "sotu"
    assert len(shipped.documents) == len(lines) == 233
    assert list(shipped.documents) == [x.strip() for x in lines]
    assert lines[0].startswith("Fellow-Citizens of the Senate")  # Washington, 1790
    assert "Biden" not in lines[0] and "pandemic" in lines[-1]  # 2021
    assert all("\n" not in d and d == d.strip() for d in shipped.documents)


def test_shipped_split_is_disjoint_and_fixed(shipped):
    stats, held = shipped.stats_documents(), shipped.heldout_documents()
    assert len(held) == 12 and len(stats) == 221
    assert stats + held == shipped.documents
    heldout = shipped.heldout_texts()
    assert heldout == load_corpus().heldout_texts()
    assert 0 < sum(map(len, heldout)) <= 20_000
    stats_text = " ".join(stats)
    assert not any(chunk in stats_text for chunk in heldout)


def test_stats_texts_chunks_and_budget(shipped):
    chunks = shipped.stats_texts(max_chars=100_000)
    assert chunks == shipped.stats_texts(max_chars=100_000)
    assert 80_000 < sum(map(len, chunks)) <= 100_000
    assert all(len(c) <= CHUNK_MAX for c in chunks)
    # A budget samples the whole statistics part, not only its first documents.
    assert chunks[0] in shipped.documents[0]
    late = " ".join(shipped.stats_documents()[-20:])
    assert any(c in late for c in chunks[-5:])


def test_chunk_text_sizes():
    text = _words(3000, "w")
    chunks = chunk_text(text)
    assert " ".join(chunks) == text
    assert all(CHUNK_MIN <= len(c) <= CHUNK_MAX for c in chunks[:-1])
    assert all(c.endswith(".") for c in chunks[:-1])  # cut at sentence ends when possible
    assert chunk_text("short text") == ["short text"]


def test_user_plain_file(tmp_path):
    docs = [_words(400, f"d{i}_") for i in range(40)]
    raw = ("\n\n".join(docs) + "\n").encode()
    path = tmp_path / "mine.txt"
    path.write_bytes(raw)
    c = load_corpus(path)
    assert c.name == "mine.txt"
    assert c.id == hashlib.sha256(raw).hexdigest()
    assert len(c.documents) == 40
    assert c.heldout_documents() == tuple(docs[-2:])
    stats = " ".join(c.stats_texts())
    assert "d37_" in stats and "d38_" not in stats and "d39_" not in stats
    held = c.heldout_texts(n_chars=10**6)
    assert " ".join(held) == " ".join(docs[-2:])
    assert all(("d38_" in t or "d39_" in t) and "d37_" not in t for t in held)


def test_user_zst_file_same_id(tmp_path):
    raw = b"First document here.\n\nSecond one, a bit longer.\n"
    plain = tmp_path / "c.txt"
    plain.write_bytes(raw)
    packed = tmp_path / "c.txt.zst"
    packed.write_bytes(zstandard.ZstdCompressor(level=3).compress(raw))
    a, b = load_corpus(plain), load_corpus(packed)
    assert a.id == b.id and a.documents == b.documents
    assert b.name == "c.txt"


def test_single_document_still_has_heldout(tmp_path):
    path = tmp_path / "one.txt"
    path.write_text(_words(2000, "x"))
    c = load_corpus(path)
    stats, held = c.stats_documents(), c.heldout_documents()
    assert len(stats) == 1 and len(held) == 1
    assert stats[0] + " " + held[0] == c.documents[0]
    assert 0 < len(held[0]) < 0.1 * len(c.documents[0])


@pytest.mark.parametrize(
    "content, message",
    [(b"", "empty"), (b"  \n\n \t\n", "empty"), (b"\xff\xfe\x00bad", "not UTF-8")],
)
def test_bad_user_files(tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(NmkevcError, match=message):
        load_corpus(path)


def test_missing_dir_and_broken_zst(tmp_path):
    with pytest.raises(NmkevcError, match="does not exist"):
        load_corpus(tmp_path / "nope.txt")
    with pytest.raises(NmkevcError, match="directory"):
        load_corpus(tmp_path)
    broken = tmp_path / "broken.zst"
    broken.write_bytes(zstandard.ZstdCompressor().compress(b"hello world" * 100)[:-8])
    with pytest.raises(NmkevcError, match="zstandard"):
        load_corpus(broken)
