"""The merge strategies a conflicting merge can be resolved with (torch-free: the CLI
reads the names to build its choices without loading the model stack)."""

#: keep ours / keep theirs for the conflicting commits, sum anyway, or replay their edits on ours
STRATEGIES = ("ours", "theirs", "sum", "replay")
