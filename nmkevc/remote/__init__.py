"""Sharing: remotes at fsspec URLs, bundles, and the transfer of objects and refs.

Uses only the repository and storage layers; porcelain composes it into verbs."""
