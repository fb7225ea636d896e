"""The HTML of reports: plain values (no reprs), tables, a style, and a page that opens from disk.

Every page is self-contained: inline CSS, figures and data linked by relative paths, and one inline
script of its own that marks the page once loaded (data-images-loaded, data-images-broken,
data-overflow on <body>) and names any figure that failed to load at the top of the page. Nothing is
fetched from elsewhere.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from mlfo_toolkit.fl.partitions import PartitionSpec
from mlfo_toolkit.util.files import write_text


def plain(value: Any, key: str = "") -> str:
    """A value as a reader writes it: lists joined, a partition as `dirichlet alpha=0.1`, no reprs."""
    if value is None:
        return ""
    if key == "partition" and isinstance(value, dict):
        return PartitionSpec.model_validate(value).label()
    if isinstance(value, dict):
        return ", ".join(f"{k}={plain(v, k)}" for k, v in value.items())
    if isinstance(value, (list, tuple, set)):
        return ", ".join(plain(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def conditions_text(conditions: dict[str, Any] | None) -> str:
    """One line on what the network emulated (run.json's `conditions`), e.g. that delay and loss were not."""
    if not conditions:
        return ""
    parts = [f"{conditions.get('topology', '')} ({conditions.get('backend', '')}), controller {conditions.get('controller', 'none')}",
             f"delay and loss: {conditions.get('delay_and_loss', '')}"]
    if conditions.get("traces"):
        parts.append(f"traces on {', '.join(conditions['traces'])}")
    return "; ".join(parts)


def html_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    """A table of plain values; columns empty in every row are left out."""
    if not rows:
        return "<p>(none)</p>"
    columns = [c for c in (columns or list(rows[0])) if any(plain(row.get(c), c) for row in rows)]
    head = "".join(f"<th>{html.escape(c.replace('_', ' '))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(plain(row.get(c), c))}</td>" for c in columns) + "</tr>" for row in rows)
    return f"<div class='scroll'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


STYLE = """
body{font-family:system-ui,sans-serif;margin:0 auto;padding:1.5em;max-width:1100px;color:#222;line-height:1.4}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85em}th,td{padding:3px 8px;border-bottom:1px solid #e4e4e4;text-align:left;vertical-align:top}
th{background:#f4f4f4}.scroll{overflow-x:auto;max-width:100%}dl{display:grid;grid-template-columns:max-content auto;gap:2px 14px}
dt{font-weight:600}dd{margin:0;overflow-wrap:anywhere}figure{margin:1em 0}img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.9em;color:#444}.links a{margin-right:.8em}pre{background:#f7f7f7;padding:.6em;overflow-x:auto;font-size:.8em}
#missing{color:#b00;font-weight:600}
"""
# Marks the page once loaded: data-images-loaded / data-images-broken / data-overflow, and says so at the
# top when a figure is missing. Inline, from this page only: the report needs no network.
CHECK = """
<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
  var doc = document.documentElement;
  document.body.setAttribute('data-images-loaded', String(imgs.length - broken.length));
  document.body.setAttribute('data-images-broken', String(broken.length));
  document.body.setAttribute('data-overflow', String(doc.scrollWidth > doc.clientWidth + 1));
  if (broken.length) {
    document.getElementById('missing').textContent = 'Missing figures: ' + broken.map(function (i) { return i.getAttribute('src'); }).join(', ');
  }
});
</script>
"""



def write_page_file(path: Path, title: str, body: str) -> Path:
    write_text(path, f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                     f"<meta name='viewport' content='width=device-width,initial-scale=1'><style>{STYLE}</style></head>"
                     f"<body>{body}{CHECK}</body></html>")
    return path
