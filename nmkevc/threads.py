"""How torch's OpenMP threads wait between parallel regions: chosen before torch loads.

An edit's maths run many short parallel regions (Step 1's small products, the attribution's
cache-sized blocks of exponentials). Threads that sleep between regions
(`OMP_WAIT_POLICY=PASSIVE`) pay a wake-up at every one; threads that spin without bound
(`ACTIVE`) take the cores from any other process. A bounded spin (`GOMP_SPINCOUNT`: spin a few
tens of microseconds, then sleep) keeps most of both: `benchmarks/wait_policy.py` measures a
one-fact edit's Step 1 and attribution under the three, on free cores and beside busy
processes (docs/figures/wait_policy.json; docs/method.md, "Threads").
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

#: libgomp's spins before a waiting thread sleeps (torch's CPU wheels use libgomp). Its own
#: default with no policy set, 300000, spins long enough to slow a busy neighbour.
WAIT_SETTINGS = {"GOMP_SPINCOUNT": "30000"}


def choose_wait(environ: MutableMapping[str, str] = os.environ) -> None:
    """Set `WAIT_SETTINGS` in `environ` unless its owner already chose how threads wait
    (`OMP_WAIT_POLICY` or `GOMP_SPINCOUNT` set). Only before torch loads does it take effect;
    `import nmkevc` never calls it (the `nmkevc` command and the benchmarks do)."""
    if "OMP_WAIT_POLICY" in environ or "GOMP_SPINCOUNT" in environ:
        return
    environ.update(WAIT_SETTINGS)


def wait_described(environ: MutableMapping[str, str] = os.environ) -> str:
    """How this process's threads wait, as its environment says (for a benchmark's record)."""
    chosen = [f"{k}={environ[k]}" for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT") if k in environ]
    return ", ".join(chosen) or "libgomp's default"
