"""Fact files for the verbs: reading edit requests, and building the shipped fact sets."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UsageError
from ..facts import EditRequest

if TYPE_CHECKING:  # annotations only: the verbs import the fact sets and evaluation when they run
    from ..datasets.counterfact import CounterFactRecord
    from ..evaluation.metrics import EvalCase

#: the fact sets `build_dataset` can make (name → what it is built from)
DATASETS = {"countryinfo": "7 relations of countries and their provinces, from PyPI countryinfo (MIT)"}


@dataclass(frozen=True)
class DatasetReport:
    path: str
    records: int
    counts: dict[str, int]

    def to_json(self) -> dict:
        return asdict(self)


def dataset_names() -> list[str]:
    return list(DATASETS)


def read_requests(path: str | Path) -> list[EditRequest]:
    """Edit requests from a JSON / JSONL / CounterFact file (bad records named by index)."""
    from ..datasets import read_edit_file

    return read_edit_file(path)


def build_dataset(name: str, out: str | Path, seed: int = 0, relations: list[str] | None = None,
                  max_per_relation: int | None = None, split: str | None = None) -> DatasetReport:
    """Write a CounterFact-schema fact set built from real-world data (`split`: dev / test part)."""
    if name not in DATASETS:
        raise UsageError(f"unknown dataset {name!r} (choose one of {', '.join(DATASETS)})")
    from ..datasets import build_countryinfo, count_by_relation, write_dataset

    recs = build_countryinfo(seed=seed, relations=relations, max_per_relation=max_per_relation, split=split)
    path = write_dataset(recs, out)
    return DatasetReport(str(path), len(recs), dict(count_by_relation(recs)))


def eval_cases(source: str | Path, n: int | None = None, seed: int = 0, neighbours: int = 5,
               split: str | None = "test") -> list:
    """Evaluation cases (edit request + per-neighbour answers) for the lifelong benchmark:
    from a built-in fact set by name (its `split` part, shuffled with `seed`) or from a
    CounterFact-schema file (in file order); `n` of them, each with `neighbours` neighbours."""
    import random

    from ..datasets.counterfact import counterfact_record
    from ..datasets.records import Located, read_records

    if n is not None and n < 1:
        raise UsageError("the number of edits must be at least 1")
    if neighbours < 0:
        raise UsageError("neighbours must be zero or more")
    if str(source) in DATASETS:
        from ..datasets import build_countryinfo

        records = build_countryinfo(seed=seed, split=split)
        random.Random(seed).shuffle(records)
        located = [Located(f"{source} record {r['case_id']}", r) for r in records]
    else:
        located = read_records(source)
    if n is not None:
        if n > len(located):
            raise UsageError(f"asked for {n} edits but {source} has {len(located)} records")
        located = located[:n]
    return [eval_case(counterfact_record(loc), neighbours) for loc in located]


def eval_case(cf: CounterFactRecord, neighbours: int | None = None) -> EvalCase:
    """A CounterFact record as an `EvalCase` (its first `neighbours` neighbours, or all), with
    what the record says of each neighbour (its answer, its subject) and the relation."""
    from dataclasses import replace

    from ..evaluation.metrics import EvalCase

    def cut(values):
        return None if values is None else values[:neighbours]

    req = cf.request if neighbours is None else replace(cf.request, neighborhood=cf.request.neighborhood[:neighbours])
    return EvalCase(req, cut(cf.neighborhood_answers), cf.relation_id, cut(cf.neighborhood_subjects))
