"""Models layer: architecture adapters, base manifests, loading and the embedded default."""
