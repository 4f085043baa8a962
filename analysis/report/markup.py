"""HTML pieces of the report page: embedded figures with links to their PNG and CSV, tables,
notes, and the page's style sheet. Figures are embedded as base64, so ``index.html`` can be
mailed or opened offline; the files beside it hold the same figures and their data."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path

from analysis.reproduction.document import Table, inline_html, to_html

__all__ = ["CSS", "figure", "grid", "table", "note", "section"]

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:14px 22px;max-width:1360px;
color:#1d1d1f;font-size:13px;line-height:1.35}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;border-bottom:1px solid #ccc;margin:22px 0 8px;
padding-bottom:2px}h3{font-size:14px;margin:14px 0 6px}h4{font-size:13px;margin:12px 0 4px}
nav{font-size:12px;color:#555;margin-bottom:6px}nav a{margin-right:10px}
img{max-width:100%;height:auto}figure{margin:6px 0 10px}
figcaption{color:#666;font-size:11px}figcaption a{color:#666}
.tbl{border-collapse:collapse;font-size:12px;margin:4px 0 8px}
.tbl td,.tbl th{padding:2px 7px;border-bottom:1px solid #e4e4e4;text-align:left;vertical-align:top}
.tbl th{background:#f3f3f3;font-weight:600}
.note{background:#f5f6f8;border-left:3px solid #9aa5b1;padding:5px 10px;font-size:12px;margin:6px 0}
.warn{background:#fff6e0;border-left:3px solid #e0a100;padding:6px 10px;margin:6px 0}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(430px,1fr));gap:8px 14px}
.answer h2{margin-top:6px;margin-bottom:4px}.answer .tbl td,.answer .tbl th{padding:1px 7px}
.answer .tbl td:nth-child(3){white-space:nowrap}.answer .note{margin:3px 0;padding:3px 10px}
tr.v-holds td{background:#e6f4e3}tr.v-fails td{background:#fbe4e1}
tr.v-inconclusive td{background:#fdf4d9}tr.v-untestable td{background:#efefef;color:#555}
tr.v-partial td{background:#e6eef9}
.details{font-size:12.5px}.details ul{margin:2px 0 6px 0;padding-left:18px}
code{background:#f1f1f1;padding:0 3px;border-radius:2px}
"""


def figure(path: Path, caption: str = "") -> str:
    """The PNG embedded, with the caption and links to the PNG and the CSV beside it."""
    data = base64.b64encode(path.read_bytes()).decode()
    csv = path.with_suffix(".csv")
    links = f"<a href='{html.escape(path.name)}'>{html.escape(path.name)}</a>"
    if csv.exists():
        links += f" · data: <a href='{html.escape(csv.name)}'>{html.escape(csv.name)}</a>"
    text = f"{inline_html(caption)} " if caption else ""
    return (f"<figure><img src=\"data:image/png;base64,{data}\" alt=\"{html.escape(path.stem)}\"/>"
            f"<figcaption>{text}({links})</figcaption></figure>")


def grid(parts: Sequence[str]) -> str:
    """Figures side by side, as many columns as the window holds."""
    return "<div class='grid'>" + "".join(parts) + "</div>"


def table(header: Sequence[str], rows: Sequence[Sequence[object]],
          row_classes: Sequence[str] = ()) -> str:
    """A table of text cells (``**bold**`` and ```code``` marks allowed)."""
    return to_html([Table(tuple(header), tuple(tuple(str(c) for c in r) for r in rows),
                          tuple(row_classes))])


def note(text: str, *, cls: str = "note") -> str:
    return f"<p class='{cls}'>{inline_html(text)}</p>"


def section(anchor: str, title: str, body: str) -> str:
    return f"<section id='{html.escape(anchor)}'><h2>{inline_html(title)}</h2>{body}</section>"
