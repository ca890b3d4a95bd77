"""Shared fixtures: tiny model directories (built once per session) and repositories on them."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import tiny  # noqa: E402


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
