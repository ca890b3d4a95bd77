"""Porcelain: the verbs users call, from Python or through the CLI.

Besides `Repository`, the vocabulary the CLI needs from the layers below (the request record,
the parsers of hyperparameter settings, the editing methods' names, the hub-id test, the
lifelong results table, the device and dtype record), so that the CLI imports porcelain only.
Resolved lazily so that the CLI can read small torch-free modules (merge strategies, dataset
names, method names) without loading the model stack."""

from ..lazy import lazy_exports

_EXPORTS = {
    "Repository": ".repository",
    "EditRequest": "..facts",
    "parse_setting": "..editing.hparams",
    "split_top": "..editing.hparams",
    "method_names": "..editing.registry",
    "markdown_table": "..evaluation.lifelong_report",
    "looks_like_hub_id": "..models.source",
    "Runtime": "..models.runtime",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
