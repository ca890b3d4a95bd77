"""Hostile peers and racing pushes, measured (issue 24): writes benchmarks/reliability.json
and the block of docs/reliability.md between its markers.

1. Every hostile object of tests/test_untrusted.py's matrix, fetched from a bundle into a
   good clone: refused (with its one-line message), nothing stored, fsck clean after.
2. Pushers racing to one remote, a local path and S3 (moto's server over HTTP, s3fs):
   each round every pusher commits on the same tip and all push at once (a barrier; each
   ref read is followed by a pause, to widen the window between read and write). Counted:
   winners per round (must be exactly one), lost updates (a push that reported success
   whose commit the remote's branch does not hold at the end: must be 0), refusals by kind.

    python benchmarks/reliability.py [--pushers 4] [--rounds 50] [--out benchmarks/reliability.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = Path(__file__).with_name("reliability.json")
DOC = ROOT / "docs" / "reliability.md"
BEGIN = "<!-- reliability.json: begin (benchmarks/reliability.py writes this block) -->"
END = "<!-- reliability.json: end -->"
#: Pause after each remote ref read: the race window the pushes must survive.
READ_PAUSE = 0.02


def _tests_on_path() -> None:
    tests = str(ROOT / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)


# -- races ----------------------------------------------------------------------------------
@contextmanager
def widened(pause: float = READ_PAUSE) -> Iterator[None]:
    """Make every remote ref read slow, so racing pushes overlap between read and write."""
    from nmkevc.remote.location import RemoteRepo

    plain = RemoteRepo.read_ref

    def slow(self, ref):
        out = plain(self, ref)
        time.sleep(pause)
        return out

    RemoteRepo.read_ref = slow
    try:
        yield
    finally:
        RemoteRepo.read_ref = plain


def _kind(message: str) -> str:
    for key, name in (("changed while pushing", "changed while pushing"), ("non-fast-forward", "non-fast-forward"),
                      ("push rejected", "rejected"), ("locked", "locked")):
        if key in message:
            return name
    return "other: " + message[:80]


def race(work: Path, url: str, pushers: int, rounds: int, make_base: Callable[[Path], Path]) -> dict:
    """`pushers` clones of a remote at `url` push a new commit each at once, `rounds` times."""
    _tests_on_path()
    from random_deltas import commit_random

    from nmkevc import Repository
    from nmkevc.errors import NmkevcError
    from nmkevc.remote import remotes, transfer
    from nmkevc.repo.repository import Repo

    origin = work / "origin"
    Repository.init(origin, base=str(make_base(work)))
    o = Repo.open(origin)
    remotes.add_remote(o, "shared", url)
    transfer.push(o, "shared")
    clones = []
    for i in range(pushers):
        transfer.clone(url, work / f"p{i}")
        clones.append(work / f"p{i}")
    winners: list[int] = []
    refusals: Counter = Counter()
    succeeded: list[str] = []
    seconds: list[float] = []
    for rnd in range(rounds):
        tips = [commit_random(c, seed=rnd * 100 + i, subject=f"S{rnd}-{i}") for i, c in enumerate(clones)]
        barrier = threading.Barrier(pushers)
        outcome: list[str | None] = [None] * pushers

        def push(i: int, barrier: threading.Barrier = barrier, outcome: list = outcome) -> None:
            repo = Repo.open(clones[i])
            barrier.wait()
            try:
                transfer.push(repo, "origin")
                outcome[i] = "ok"
            except NmkevcError as e:
                outcome[i] = str(e)

        t0 = time.perf_counter()
        threads = [threading.Thread(target=push, args=(i,)) for i in range(pushers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds.append(time.perf_counter() - t0)
        won = [i for i, x in enumerate(outcome) if x == "ok"]
        winners.append(len(won))
        succeeded += [tips[i] for i in won]
        refusals.update(_kind(x) for x in outcome if x and x != "ok")
        for c in clones:  # everyone takes the remote's branch and goes on from there
            r = Repo.open(c)
            transfer.fetch(r, "origin")
            with r.writing():
                r.refs.set("refs/heads/main", r.refs.read("refs/remotes/origin/main"), "race: sync")
    final = Repo.open(clones[0])
    transfer.fetch(final, "origin")
    history = final.graph.ancestors(final.refs.read("refs/remotes/origin/main"))
    lost = [c for c in succeeded if c not in history]
    return {"pushers": pushers, "rounds": rounds, "rounds_with_one_winner": sum(1 for w in winners if w == 1),
            "rounds_with_no_winner": sum(1 for w in winners if w == 0),
            "rounds_with_several_winners": sum(1 for w in winners if w > 1), "pushes": pushers * rounds,
            "succeeded": len(succeeded), "lost_updates": len(lost), "refusals": dict(sorted(refusals.items())),
            "median_round_seconds": round(sorted(seconds)[len(seconds) // 2], 3)}


@contextmanager
def moto_s3() -> Iterator[str]:
    """An S3-compatible server on 127.0.0.1 (moto), s3fs pointed at it; yields a bucket URL."""
    import fsspec.config
    import s3fs
    from moto.moto_server.threaded_moto_server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    saved_env = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    saved_conf = fsspec.config.conf.get("s3")
    fsspec.config.conf["s3"] = {"client_kwargs": {"endpoint_url": f"http://{host}:{port}"}}
    s3fs.S3FileSystem.clear_instance_cache()
    bucket = f"nmkevc-race-{uuid.uuid4().hex[:10]}"
    s3fs.S3FileSystem().mkdir(bucket)
    try:
        yield f"s3://{bucket}/repo"
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        if saved_conf is None:
            fsspec.config.conf.pop("s3", None)
        else:
            fsspec.config.conf["s3"] = saved_conf
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


def races(pushers: int, rounds: int, make_base: Callable[[Path], Path], with_s3: bool = True) -> dict:
    out = {}
    with tempfile.TemporaryDirectory(prefix="nmkevc-race-") as tmp, widened():
        out["path"] = race(Path(tmp) / "path", str(Path(tmp) / "remote"), pushers, rounds, make_base)
        if with_s3:
            with moto_s3() as url:
                out["s3"] = race(Path(tmp) / "s3", url, pushers, rounds, make_base)
    return out


# -- the hostile matrix ---------------------------------------------------------------------
def hostile_matrix(make_base: Callable[[Path], Path]) -> dict:
    """Run every case of tests/test_untrusted.py's CASES against a fresh clone."""
    _tests_on_path()
    import test_untrusted as tu
    from forge import history_objects, write_bundle
    from random_deltas import commit_random

    from nmkevc import Repository
    from nmkevc.errors import NmkevcError
    from nmkevc.porcelain.maintenance import fsck
    from nmkevc.remote import remotes, transfer
    from nmkevc.repo.repository import Repo

    rows = []
    with tempfile.TemporaryDirectory(prefix="nmkevc-hostile-") as tmp:
        work = Path(tmp)
        Repository.init(work / "src", base=str(make_base(work)))
        commit_random(work / "src", 1, "France")
        src = Repo.open(work / "src")
        bases = {b: s.to_json() for b, s in src.config.bases.items()}
        for n, (name, (make, _match)) in enumerate(tu.CASES.items()):
            tip, extra = make(src)
            path = write_bundle(work / f"{n}.bundle", {"refs/heads/main": tip}, {**history_objects(src), **extra},
                                bases=bases)
            dst = work / f"dst{n}"
            transfer.clone(str(src.dir.parent), dst)
            d = Repo.open(dst)
            remotes.add_remote(d, "evil", str(path))
            before = dict(d.refs.list("refs/"))
            try:
                transfer.fetch(Repo.open(dst), "evil")
                message, refused = "", False
            except NmkevcError as e:
                message, refused = str(e), True
            after = Repo.open(dst)
            rows.append({"case": name, "refused": refused, "message": message.replace(str(work), "<work>"),
                         "stored": sum(after.store.exists(o) for o in extra),
                         "refs_unchanged": dict(after.refs.list("refs/")) == before, "fsck_ok": fsck(after).ok})
    return {"cases": len(rows), "refused": sum(r["refused"] for r in rows),
            "nothing_stored": sum(r["stored"] == 0 for r in rows),
            "fsck_clean_after": sum(r["fsck_ok"] and r["refs_unchanged"] for r in rows), "rows": rows}


# -- the test matrix --------------------------------------------------------------------------
TEST_FILES = ("tests/test_untrusted.py", "tests/test_reliability.py")


def test_counts() -> dict[str, int]:
    """How many cases each test file of this issue holds (pytest's own collection)."""
    import re
    import subprocess

    out = {}
    for f in TEST_FILES:
        p = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", f],
                           cwd=ROOT, capture_output=True, text=True, timeout=600)
        m = re.search(r"(\d+) tests? collected", p.stdout)
        out[f] = int(m.group(1)) if m else -1
    return out


# -- the docs block -------------------------------------------------------------------------
def markdown(data: dict | None) -> str:
    if not data:
        return "_(run `python benchmarks/reliability.py`)_"
    h = data["hostile"]
    tests = ", ".join(f"{n} in `{f}`" for f, n in data.get("tests", {}).items())
    lines = [f"Cases in `make test`: {tests}.", "",
             "Hostile objects (`tests/test_untrusted.py`'s matrix, fetched from a bundle into a good clone): "
             f"{h['refused']} of {h['cases']} refused, nothing stored in {h['nothing_stored']}, "
             f"refs unchanged and fsck clean after {h['fsck_clean_after']}.", "",
             f"Racing pushes ({data['pushers']} pushers, {data['rounds']} rounds, every ref read followed by "
             f"{data['read_pause_ms']} ms):", "",
             "| remote | rounds with one winner | no winner | several | pushes | succeeded | lost updates "
             "| refused (why) | median round |",
             "|---|---|---|---|---|---|---|---|---|"]
    for backend, r in data["races"].items():
        why = ", ".join(f"{k} {v}" for k, v in r["refusals"].items())
        lines.append(f"| {backend} | {r['rounds_with_one_winner']}/{r['rounds']} | {r['rounds_with_no_winner']} "
                     f"| {r['rounds_with_several_winners']} | {r['pushes']} | {r['succeeded']} | "
                     f"{r['lost_updates']} | {why} | {r['median_round_seconds']} s |")
    return "\n".join(lines)


def write_doc(data: dict) -> None:
    text = DOC.read_text()
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    DOC.write_text(head + BEGIN + "\n" + markdown(data) + "\n" + END + tail)


def main() -> None:
    from nmkevc.threads import choose_wait

    choose_wait()  # before torch loads: nmkevc.threads, as the nmkevc command does
    ap = argparse.ArgumentParser()
    ap.add_argument("--pushers", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    args = ap.parse_args()
    _tests_on_path()
    import tiny

    cache: dict[str, Path] = {}

    def make_base(work: Path) -> Path:
        if "dir" not in cache:
            cache["dir"] = tiny.make_model_dir(Path(tempfile.mkdtemp(prefix="nmkevc-base-")) / "llama", "llama")
        return cache["dir"]

    t0 = time.perf_counter()
    data = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "pushers": args.pushers, "rounds": args.rounds, "read_pause_ms": int(READ_PAUSE * 1000),
            "tests": test_counts(), "hostile": hostile_matrix(make_base),
            "races": races(args.pushers, args.rounds, make_base)}
    data["seconds"] = round(time.perf_counter() - t0, 1)
    Path(args.out).write_text(json.dumps(data, indent=1) + "\n")
    if Path(args.out) == DEFAULT_OUT:
        write_doc(data)
    print(markdown(data))


if __name__ == "__main__":
    main()
