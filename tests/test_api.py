"""The public API: what `import nmkevc` names, and what importing it leaves alone."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import nmkevc
from nmkevc import errors
from nmkevc.cli import app, base

ROOT = Path(__file__).resolve().parent.parent

_IMPORT = """
import json, os, sys
before = dict(os.environ)
import nmkevc
print(json.dumps({"environ_changed": dict(os.environ) != before, "names": dir(nmkevc),
                  "heavy": sorted(m for m in ("torch", "transformers", "networkx") if m in sys.modules)}))
"""


def test_import_changes_no_environment_variable_and_loads_no_torch():
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    proc = subprocess.run([sys.executable, "-c", _IMPORT], env={**env, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, check=True)
    got = json.loads(proc.stdout)
    assert not got["environ_changed"] and got["heavy"] == []
    assert set(nmkevc.__all__) <= set(got["names"])


def test_the_api_names_the_verbs_the_records_and_every_error_type():
    from nmkevc.editing.hparams import EditHparams
    from nmkevc.facts import EditRequest
    from nmkevc.porcelain.repository import Repository

    error_types = {n for n, v in vars(errors).items() if isinstance(v, type) and issubclass(v, errors.NmkevcError)}
    assert {"Repository", "EditRequest", "EditHparams", *error_types} <= set(dir(nmkevc)) & set(nmkevc.__all__)
    assert (nmkevc.Repository, nmkevc.EditRequest, nmkevc.EditHparams) == (Repository, EditRequest, EditHparams)
    assert all(getattr(nmkevc, n) is getattr(errors, n) for n in error_types)
    records = [getattr(nmkevc, n) for n in nmkevc.__all__ if n.endswith("Hparams")]
    assert len(records) == 4 and all(issubclass(r, EditHparams) for r in records)
    assert all(hasattr(nmkevc, n) for n in nmkevc.__all__)


def test_the_command_spins_briefly_unless_told_otherwise(monkeypatch):
    """Bounded spinning (nmkevc.threads, measured by benchmarks/wait_policy.py) unless the user
    set either variable: their choice is left alone, and nothing else is set beside it."""
    from nmkevc.threads import WAIT_SETTINGS

    seen = []
    monkeypatch.setattr(base, "run", lambda: seen.append((os.environ.get("OMP_WAIT_POLICY"),
                                                          os.environ.get("GOMP_SPINCOUNT"))))
    for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        monkeypatch.delenv(name, raising=False)
    app.run()
    monkeypatch.delenv("GOMP_SPINCOUNT")
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    app.run()
    assert seen == [(None, WAIT_SETTINGS["GOMP_SPINCOUNT"]), ("PASSIVE", None)]


def test_the_cli_imports_porcelain_and_the_shared_vocabulary_only():
    below = set()
    for path in (ROOT / "nmkevc" / "cli").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 2:
                below.add((node.module or "").split(".")[0])
    # threads: how OpenMP waits, set for the process before torch loads (a leaf: imports nothing of ours)
    assert below <= {"porcelain", "errors", "units", "version", "threads"}, below
