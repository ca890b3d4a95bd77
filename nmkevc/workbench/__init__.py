"""The model workbench: the model side of a repository (bases on disk, live and base
models, materialised states, tokenizer, statistics and the inputs of an edit).

It sits between the porcelain and the layers below: it reads objects, refs and caches
through the storage-level `Repo`, and runs the models (models/) and the editing engine
(editing/) on them. The engine never reaches back: an edit's inputs are gathered here
once (`EditInputs`) and handed down.
"""

from .bench import Workbench

__all__ = ["Workbench"]
