"""An empty key/value cache for a model, made by us rather than by its forward.

Step 1's replay and the scorer's shared contexts both pass their own cache into a forward:
transformers versions before 4.47 hand back a legacy tuple when the forward makes the cache
itself, and only a `Cache` object can be rewound (`layers`) or re-indexed (`reorder_cache`).
"""

from __future__ import annotations


def new_dynamic_cache(config=None):
    """A `transformers.DynamicCache` (built from `config` where that version takes one), or None
    when this transformers has none."""
    try:
        from transformers import DynamicCache
    except ImportError:
        return None
    try:
        return DynamicCache(config=config)
    except TypeError:
        return DynamicCache()
