"""Text corpora for the covariance statistics and the held-out perplexity check.

NMKE/AlphaEdit protect a model's general knowledge with per-layer key statistics
`C = Σ k kᵀ` collected over ordinary text, and we measure the damage an edit does as the
perplexity on text the statistics never saw. Both only mean something if the text is fixed:
statistics are stored keyed by the corpus id (sha256 of its text), and a perplexity is only
comparable with another one taken on the same held-out slice. So the split below is a pure
function of the text: no randomness, no dependence on how much text a caller asks for.

nmkevc ships a default corpus (U.S. State of the Union addresses, public domain; see
`nmkevc/data/README.md`). A user may give any plain-text file instead (`.zst` allowed):
documents are separated by blank lines.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .errors import NmkevcError

SHIPPED_NAME = "sotu"
SHIPPED_FILE = "corpus.txt.zst"
CHUNK_MIN = 1000
CHUNK_MAX = 2000
HELDOUT_FRACTION = 0.05
DEFAULT_HELDOUT_CHARS = 20_000
_DOC_BREAK = re.compile(r"\n[ \t\r\f\v]*\n\s*")
_SENTENCE_END = re.compile(r"[.!?][\"'”’)\]]*\s")
# A zstandard frame starts with these four bytes, whatever the file is called.
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


@dataclass(frozen=True)
class Corpus:
    """A named, content-identified list of documents with a fixed statistics/held-out split.

    `id` is the sha256 of the whole uncompressed UTF-8 text, so statistics computed on a
    corpus can be found again (and never mixed up) whatever the file is called.
    """

    id: str
    name: str
    documents: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.documents:
            raise NmkevcError(f"corpus {self.name!r} has no documents")
        object.__setattr__(self, "documents", tuple(self.documents))

    def _split(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(statistics documents, held-out documents): the last 5% of documents are held out.

        With a single document there is nothing to hold out at a document boundary, so its
        last 5% (cut at a space) is held out instead. Either way the two never overlap.
        """
        docs = self.documents
        if len(docs) >= 2:
            n_held = max(1, round(len(docs) * HELDOUT_FRACTION))
            return docs[:-n_held], docs[-n_held:]
        doc = docs[0]
        cut = int(len(doc) * (1 - HELDOUT_FRACTION))
        space = doc.rfind(" ", 0, cut)
        cut = space if space > 0 else cut
        head, tail = doc[:cut].strip(), doc[cut:].strip()
        return (head,) if head else (), (tail,) if tail else ()

    def stats_documents(self) -> tuple[str, ...]:
        return self._split()[0]

    def heldout_documents(self) -> tuple[str, ...]:
        return self._split()[1]

    def stats_texts(self, max_chars: int | None = None) -> list[str]:
        """Chunks of 1000–2000 characters from the statistics part, for the covariance pass.

        With `max_chars`, chunks are taken at an even stride over the whole statistics part
        (not just its beginning), so a small budget still samples every era of the text; the
        choice depends only on the corpus and `max_chars`.
        """
        chunks = [c for doc in self.stats_documents() for c in chunk_text(doc)]
        if max_chars is None or sum(map(len, chunks)) <= max_chars:
            return chunks
        if max_chars <= 0:
            return []
        mean = sum(map(len, chunks)) / len(chunks)
        n_pick = max(1, min(len(chunks), int(max_chars // mean)))
        picked: list[str] = []
        total = 0
        for j in range(n_pick):
            chunk = chunks[j * len(chunks) // n_pick]
            if picked and total + len(chunk) > max_chars:
                break
            picked.append(chunk)
            total += len(chunk)
        return picked

    def heldout_texts(self, n_chars: int = DEFAULT_HELDOUT_CHARS) -> list[str]:
        """The first `n_chars` (in whole chunks, at least one) of the held-out part.

        Never used for statistics; always the same chunks for the same corpus and `n_chars`.
        """
        picked: list[str] = []
        total = 0
        for doc in self.heldout_documents():
            for chunk in chunk_text(doc):
                if picked and total + len(chunk) > n_chars:
                    return picked
                picked.append(chunk)
                total += len(chunk)
        return picked

    @property
    def n_chars(self) -> int:
        return sum(map(len, self.documents))


def chunk_text(text: str, lo: int = CHUNK_MIN, hi: int = CHUNK_MAX) -> list[str]:
    """Cut text into pieces of lo..hi characters, at a sentence end if possible, else a space.

    Only a text's last piece may be shorter than `lo`.
    """
    text = " ".join(text.split())
    chunks: list[str] = []
    while len(text) > hi:
        window = text[lo:hi]
        ends = [m.end() for m in _SENTENCE_END.finditer(window)]
        if ends:
            cut = lo + ends[-1]
        else:
            space = window.rfind(" ")
            cut = lo + space + 1 if space >= 0 else hi
        chunks.append(text[:cut].strip())
        text = text[cut:].lstrip()
    if text:
        chunks.append(text)
    return chunks


def split_documents(text: str) -> tuple[str, ...]:
    """Documents are separated by blank lines; whitespace inside each is collapsed."""
    docs = (" ".join(part.split()) for part in _DOC_BREAK.split(text))
    return tuple(d for d in docs if d)


def _decompress(data: bytes, where: str) -> bytes:
    """All frames of a zstandard file; a truncated or corrupt one is an error, not less text."""
    import zstandard

    out: list[bytes] = []
    rest = data
    try:
        while rest:
            d = zstandard.ZstdDecompressor().decompressobj()
            out.append(d.decompress(rest))
            if not d.eof:
                raise NmkevcError(f"corpus {where} is a truncated zstandard file")
            rest = d.unused_data
    except zstandard.ZstdError as e:
        raise NmkevcError(f"corpus {where} is not valid zstandard data: {e}") from None
    return b"".join(out)


def _parse(data: bytes, name: str, where: str) -> Corpus:
    if data[:4] == _ZSTD_MAGIC:
        data = _decompress(data, where)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise NmkevcError(f"corpus {where} is not UTF-8 text (byte {e.start})") from None
    documents = split_documents(text)
    if not documents:
        raise NmkevcError(f"corpus {where} is empty: it needs some plain text")
    return Corpus(id=hashlib.sha256(data).hexdigest(), name=name, documents=documents)


def load_corpus(path: str | Path | None = None) -> Corpus:
    """The shipped corpus (`path=None`) or a user's plain-text file (`.zst` compressed or not)."""
    if path is None:
        data = resources.files("nmkevc").joinpath("data").joinpath(SHIPPED_FILE).read_bytes()
        return _parse(data, SHIPPED_NAME, f"(shipped {SHIPPED_FILE})")
    p = Path(path).expanduser()
    if not p.exists():
        raise NmkevcError(f"corpus file {p} does not exist")
    if p.is_dir():
        raise NmkevcError(f"corpus {p} is a directory; give a plain-text file")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise NmkevcError(f"cannot read corpus file {p}: {e.strerror}") from None
    name = p.name[: -len(".zst")] if p.name.endswith(".zst") else p.name
    return _parse(data, name, str(p))
