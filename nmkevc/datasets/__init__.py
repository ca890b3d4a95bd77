"""Fact datasets: the edit-file format, CounterFact, zsRE, and a countryinfo fact set.

Every loader returns `EditRequest`s (or small records wrapping one) and reports bad input
as an `EditRequestError` naming the file and the line or record index.
"""

from .counterfact import (
    CounterFactRecord,
    load_counterfact,
    load_counterfact_records,
)
from .countryinfo_set import build_countryinfo, count_by_relation, write_dataset
from .simple import read_edit_file
from .zsre import ZsreRecord, load_zsre

__all__ = [
    "CounterFactRecord",
    "ZsreRecord",
    "build_countryinfo",
    "count_by_relation",
    "load_counterfact",
    "load_counterfact_records",
    "load_zsre",
    "read_edit_file",
    "write_dataset",
]
