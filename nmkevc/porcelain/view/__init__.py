"""`nmkevc view`: the history as one self-contained HTML page (graph, neuron maps, merge
overlap, drift) that opens from a mail attachment: no server, no network, nothing external.

`data.gather` collects the record; `page.render` writes it into the page's template
(`page.html`: inline CSS, inline SVG drawn by a small inline script, no library);
`page.read_data` reads it back out of a page.
"""

from __future__ import annotations

from .data import FORMAT, Selection, gather, parse_spec
from .page import ViewReport, read_data, render, write_view

__all__ = ["FORMAT", "Selection", "ViewReport", "gather", "parse_spec", "read_data", "render", "write_view"]
