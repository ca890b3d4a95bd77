"""The shipped editing methods, one file each (nmke.py, alphaedit.py, memit.py), and the
registry's names (editing/registry.py) for those who import them from here."""

from ..registry import (
    BUILTIN,
    REGISTRY,
    EditMethod,
    FactorInputs,
    get_method,
    hparams_records,
    method_names,
    register_method,
)

__all__ = ["BUILTIN", "REGISTRY", "EditMethod", "FactorInputs", "get_method", "hparams_records", "method_names",
           "register_method"]
