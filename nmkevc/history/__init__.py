"""History layer: commit records and DAG queries (ancestry, merge base, effective sets)."""
