"""Shared fixtures: tiny model directories (built once per session), repositories on them, and
the two helpers every test module uses: `run` (the CLI in this process) and `commit`."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

# Passive OpenMP waiting (README: threads on shared cores) for this process and every one the
# tests start, set before torch loads: `import nmkevc` changes no environment variable.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).parent))

import tiny  # noqa: E402
from random_deltas import commit_random  # noqa: E402


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {arch: tiny.make_model_dir(root / arch, arch) for arch in tiny.ARCHS}


@pytest.fixture(params=["llama", "gpt2"])
def arch(request) -> str:
    return request.param


@pytest.fixture
def base_dir(model_dirs, arch, tmp_path) -> Path:
    """A private copy, so a test may corrupt or change it."""
    dst = tmp_path / f"base-{arch}"
    shutil.copytree(model_dirs[arch], dst)
    return dst


@pytest.fixture
def repo(base_dir, tmp_path):
    from nmkevc import Repository

    return Repository.init(tmp_path / "repo", base=str(base_dir))


@pytest.fixture
def run(capsys):
    """run(where, *args): `nmkevc -C WHERE ARGS` in this process, (exit code, stdout, stderr),
    and never a traceback. WHERE is a Repository or a directory; None gives no -C."""
    from nmkevc.cli.app import main

    def run(where, *args):
        if where is not None:
            args = ("-C", str(where if isinstance(where, (str, os.PathLike)) else where.root), *args)
        code = main(list(args))
        out = capsys.readouterr()
        assert "Traceback" not in out.err
        return code, out.out, out.err

    return run


@pytest.fixture(scope="session")
def commit():
    """commit(where, seed, subject="France", target=None, layers=(1, 2)): a random delta
    committed as teaching subject -> target (random_deltas.commit_random)."""
    return commit_random


@pytest.fixture
def src(repo, tmp_path):
    """The storage-level `Repo` of a repository with one commit on it (for transfer and
    damage tests, which work below the porcelain)."""
    from nmkevc.repo.repository import Repo

    commit_random(tmp_path / "repo", 1, "France")
    return Repo.open(tmp_path / "repo")
