"""A small document model with two renderings: Markdown (``reproduction.md``) and HTML (the
report page's verdict table and reproduction details).

The reproduction's writer builds one list of blocks from ``reproduction.json``'s data; both files
come from that list, so the Markdown and the HTML cannot drift apart. Text may use three inline
Markdown marks, ``**bold**``, ``*italic*`` and ```code```; ``to_html`` escapes everything else.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Heading", "Para", "Table", "Bullets", "Block", "to_markdown", "to_html", "inline_html"]


@dataclass(frozen=True)
class Heading:
    """A heading; ``level`` 1 is Markdown's ``#``."""

    level: int
    text: str


@dataclass(frozen=True)
class Para:
    """A paragraph of text."""

    text: str


@dataclass(frozen=True)
class Table:
    """A table of text cells; ``row_classes`` (one CSS class per row, or "") only shows in HTML."""

    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    row_classes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Bullets:
    """A (nested) bullet list: ``(depth, text)`` items, depth 0 at the margin."""

    items: tuple[tuple[int, str], ...]


Block = Heading | Para | Table | Bullets


def _md(block: Block) -> list[str]:
    if isinstance(block, Heading):
        return ["#" * block.level + " " + block.text]
    if isinstance(block, Para):
        return [block.text]
    if isinstance(block, Table):
        return (["| " + " | ".join(block.header) + " |", "|" + "---|" * len(block.header)]
                + ["| " + " | ".join(row) + " |" for row in block.rows])
    if isinstance(block, Bullets):
        return ["  " * depth + "- " + text for depth, text in block.items]
    raise TypeError(f"unknown block {block!r}; known: Heading, Para, Table, Bullets")


def to_markdown(blocks: Sequence[Block]) -> str:
    """The blocks as Markdown, one blank line between blocks, ending in a newline."""
    return "\n\n".join("\n".join(_md(b)) for b in blocks) + "\n"


_BOLD = re.compile(r"\*\*(.+?)\*\*")
_ITALIC = re.compile(r"(?<![\w*])\*(?=\S)([^*]+?)(?<=\S)\*(?![\w*])")
_CODE = re.compile(r"`([^`]+)`")


def inline_html(text: str) -> str:
    """Escaped text with ``**bold**`` as <strong>, ``*italic*`` as <em> and ```code``` as
    <code>."""
    out = _CODE.sub(r"<code>\1</code>", html.escape(text, quote=False))
    return _ITALIC.sub(r"<em>\1</em>", _BOLD.sub(r"<strong>\1</strong>", out))


def _bullets_html(items: Sequence[tuple[int, str]]) -> str:
    out, depth = [], -1
    for d, text in items:
        while depth < d:  # open one list per level down
            out.append("<ul>")
            depth += 1
        while depth > d:
            out.append("</li></ul>")
            depth -= 1
        if out and out[-1] != "<ul>":
            out.append("</li>")
        out.append(f"<li>{inline_html(text)}")
    out.extend(["</li></ul>"] * (depth + 1))
    return "".join(out)


def _html(block: Block, shift: int) -> str:
    if isinstance(block, Heading):
        level = min(6, block.level + shift)
        return f"<h{level}>{inline_html(block.text)}</h{level}>"
    if isinstance(block, Para):
        return f"<p>{inline_html(block.text)}</p>"
    if isinstance(block, Table):
        head = "".join(f"<th>{inline_html(h)}</th>" for h in block.header)
        classes = block.row_classes or ("",) * len(block.rows)
        body = "".join(
            (f"<tr class='{html.escape(c)}'>" if c else "<tr>")
            + "".join(f"<td>{inline_html(cell)}</td>" for cell in row) + "</tr>"
            for row, c in zip(block.rows, classes, strict=True))
        return f"<table class='tbl'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    if isinstance(block, Bullets):
        return _bullets_html(block.items)
    raise TypeError(f"unknown block {block!r}; known: Heading, Para, Table, Bullets")


def to_html(blocks: Sequence[Block], *, shift: int = 0) -> str:
    """The blocks as an HTML fragment; headings ``shift`` levels deeper (a page has its own h1)."""
    return "\n".join(_html(b, shift) for b in blocks)
