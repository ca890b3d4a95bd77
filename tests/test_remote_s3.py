"""Remotes on S3: a moto server on 127.0.0.1 started by the test, spoken to over HTTP by s3fs."""

from __future__ import annotations

import uuid

import pytest

from nmkevc.errors import NmkevcError
from nmkevc.porcelain.maintenance import fsck
from nmkevc.remote import remotes, transfer
from nmkevc.repo.repository import Repo

moto_server = pytest.importorskip("moto.moto_server.threaded_moto_server")
s3fs = pytest.importorskip("s3fs")


@pytest.fixture
def s3_url(monkeypatch):
    """An empty bucket on a private S3-compatible server; credentials only in the environment."""
    import fsspec.config

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    # fsspec's own configuration (what ~/.config/fsspec/s3.json would hold): the endpoint
    monkeypatch.setitem(fsspec.config.conf, "s3", {"client_kwargs": {"endpoint_url": f"http://{host}:{port}"}})
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    bucket = f"nmkevc-{uuid.uuid4().hex[:12]}"  # moto's store is per process: a fresh bucket each test
    fs.mkdir(bucket)
    try:
        yield f"s3://{bucket}/team/repo"
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        server.stop()


@pytest.mark.parametrize("arch", ["llama"])
def test_s3_round_trip(repo, tmp_path, s3_url, commit):
    origin = tmp_path / "repo"
    first = commit(origin, 1, "France")
    r = Repo.open(origin)
    remotes.add_remote(r, "s3", s3_url)
    pushed = transfer.push(r, "s3")
    assert pushed.objects == 4  # base manifest, root commit, the edit's commit and delta
    assert "testing" not in (origin / ".nmkevc" / "config.json").read_text()

    bob = tmp_path / "bob"
    transfer.clone(s3_url, bob)
    b = Repo.open(bob)
    assert b.resolve("main") == first and fsck(b).ok and not fsck(b).dangling
    second = commit(bob, 2, "Spain")
    assert transfer.push(Repo.open(bob), "origin").objects == 2

    got = transfer.fetch(Repo.open(origin), "s3")
    assert got.objects == 2 and Repo.open(origin).resolve("s3/main") == second

    # a non-fast-forward push to S3 is refused and moves nothing
    commit(origin, 3, "Italy")
    with pytest.raises(NmkevcError, match="rejected"):
        transfer.push(Repo.open(origin), "s3")
    assert transfer.fetch(Repo.open(bob), "origin").updates[0].status == "up-to-date"


@pytest.mark.parametrize("arch", ["llama"])
def test_s3_corrupt_object_refused(repo, tmp_path, s3_url, commit):
    origin = tmp_path / "repo"
    tip = commit(origin, 1, "France")
    r = Repo.open(origin)
    remotes.add_remote(r, "s3", s3_url)
    transfer.push(r, "s3")
    fs = s3fs.S3FileSystem()
    delta = r.commit(tip).delta
    fs.pipe_file(f"{s3_url[5:]}/objects/{delta[:2]}/{delta[2:]}", b"\x28\xb5\x2f\xfd garbage")
    with pytest.raises(NmkevcError, match="corrupt"):
        transfer.clone(s3_url, tmp_path / "bob")
    assert not (tmp_path / "bob" / ".nmkevc").exists()
