"""The HTML pages for people: the datasets, and the groups and arrays of one dataset."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from html import escape
from typing import Any

__all__ = ["dataset_page", "index_page"]

_STYLE = ("body{font-family:system-ui,sans-serif;margin:2em}table{border-collapse:collapse}"
          "td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left}code{font-size:90%}")


def _page(title: str, body: str) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{escape(title)}</h1>{body}</body></html>")


def index_page(datasets: Iterable[str]) -> str:
    """The root page: a link per dataset."""
    items = "".join(f"<li><a href='{escape(n)}/'>{escape(n)}</a></li>" for n in datasets)
    return _page("refstore serve", f"<p>Zarr datasets (v2 and v3 metadata at every node):</p><ul>{items}</ul>")


def dataset_page(name: str, listing: Mapping[str, Any]) -> str:
    """A dataset's page: a table of its groups and arrays."""
    rows = []
    for node in listing["nodes"]:
        path = node["path"] or "/"
        if node["node_type"] == "group":
            rows.append(f"<tr><td><code>{escape(path)}</code></td><td>group</td><td colspan=5></td></tr>")
            continue
        codecs = ", ".join(node["served_codecs"]) or "none"
        note = f"{codecs} (transcoded from {', '.join(node['source_codecs'])})" if node["transcoded"] else codecs
        rows.append(
            f"<tr><td><code>{escape(path)}</code></td><td>array</td><td>{escape(str(node['shape']))}</td>"
            f"<td>{escape(str(node['chunks']))}</td><td>{escape(node['dtype'])}</td><td>{escape(note)}</td>"
            f"<td>{escape(str(node['zarr_formats']))}</td></tr>"
        )
    table = ("<table><tr><th>path</th><th>node</th><th>shape</th><th>chunks</th><th>dtype</th>"
             f"<th>codecs served</th><th>zarr formats</th></tr>{''.join(rows)}</table>")
    hint = ("<p>Open with <code>zarr.open_group(\"&lt;this URL&gt;\", mode=\"r\")</code> or "
            "<code>xarray.open_zarr(...)</code>. JSON: <a href='?format=json'>listing</a>.</p>")
    return _page(f"dataset {name}", hint + table)
