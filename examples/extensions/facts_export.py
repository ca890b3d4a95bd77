"""An export format in one file: `nmkevc export --format facts REV DIR` writes what a
revision teaches the base, as JSON (the edited facts with the commit that made each,
and the provenance every export records), without touching the weights.

Importing this module registers the format; `tests/test_extension_points.py` exercises it
through the Python API and the CLI. docs/design.md, "How to add ...", walks through it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from nmkevc.porcelain.exports import ExportFormat, ExportJob, register


@dataclass
class FactsReport:
    commit: str
    path: str
    facts: int

    def to_json(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        return f"Exported the {self.facts} fact(s) of {self.commit[:10]} to {self.path}"


def write(job: ExportJob, tmp: Path) -> FactsReport:
    facts = job.provenance["facts"]
    (tmp / "facts.json").write_text(json.dumps({**job.provenance, "facts": facts}, indent=2), "utf-8")
    return FactsReport(job.commit, str(job.target), len(facts))


register(ExportFormat("facts", "the facts a revision teaches, as JSON", {}, write))
