"""Storage layer: content-addressed objects, refs, the repository lock. Knows no ML."""
