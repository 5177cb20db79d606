"""One document, two renderings: Markdown (``report.md``) and self-contained HTML (``report.html``).

The report is built once as a list of blocks; each renderer walks it. Text from the storage (a
data description read from a user's file, technique names, parameter values) is escaped by the
renderer, never by the caller: HTML through ``html.escape``, Markdown by backslash-escaping the
characters that would otherwise make markup (``\\ ` * _ [ ] < > |``).

Inline content is a list of pieces: a plain ``str``, or ``Code(text)`` / ``Bold(text)``.
Images are PNG bytes: the Markdown links the file written beside it, the HTML inlines the same
bytes as a ``data:image/png;base64`` URI, so the HTML needs no other file and fetches nothing.
"""
from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Code:
    text: str


@dataclass(frozen=True)
class Bold:
    text: str


@dataclass
class Heading:
    level: int
    inlines: list


@dataclass
class Para:
    inlines: list


@dataclass
class Bullets:
    items: list                      # each a list of inlines


@dataclass
class Table:
    headers: list[str]
    rows: list[list]                 # cells: str or a list of inlines
    align: str                       # one "l" / "r" per column
    row_classes: list[str] = field(default_factory=list)   # HTML class per row ("" = none)


@dataclass
class Image:
    file: str                        # relative to the report
    png: bytes
    alt: str
    caption: list                    # inlines


@dataclass
class CodeBlock:
    text: str
    lang: str = ""


_MD_SPECIAL = set("\\`*_[]<>|")


def md_escape(text: str) -> str:
    """Backslash-escape Markdown's markup characters; newlines become spaces."""
    text = " ".join(str(text).splitlines())
    return "".join("\\" + c if c in _MD_SPECIAL else c for c in text)


def _md_inlines(inlines) -> str:
    if isinstance(inlines, str):
        inlines = [inlines]
    out = []
    for piece in inlines:
        if isinstance(piece, Code):
            t = " ".join(piece.text.splitlines())
            fence = "``" if "`" in t else "`"
            pad = " " if "`" in t else ""
            out.append(f"{fence}{pad}{t}{pad}{fence}")
        elif isinstance(piece, Bold):
            out.append(f"**{md_escape(piece.text)}**")
        else:
            out.append(md_escape(piece))
    return "".join(out)


def _html_inlines(inlines) -> str:
    if isinstance(inlines, str):
        inlines = [inlines]
    out = []
    for piece in inlines:
        if isinstance(piece, Code):
            out.append(f"<code>{html.escape(piece.text)}</code>")
        elif isinstance(piece, Bold):
            out.append(f"<strong>{html.escape(piece.text)}</strong>")
        else:
            out.append(html.escape(str(piece)))
    return "".join(out)


def to_markdown(blocks: list) -> str:
    parts = []
    for b in blocks:
        if isinstance(b, Heading):
            parts.append("#" * b.level + " " + _md_inlines(b.inlines))
        elif isinstance(b, Para):
            parts.append(_md_inlines(b.inlines))
        elif isinstance(b, Bullets):
            parts.append("\n".join("- " + _md_inlines(item) for item in b.items))
        elif isinstance(b, Table):
            lines = ["| " + " | ".join(md_escape(h) for h in b.headers) + " |",
                     "|" + "|".join("---:" if a == "r" else ":---" for a in b.align) + "|"]
            for row in b.rows:
                lines.append("| " + " | ".join(_md_inlines(c) for c in row) + " |")
            parts.append("\n".join(lines))
        elif isinstance(b, Image):
            parts.append(f"![{md_escape(b.alt)}]({b.file})\n\n" + _md_inlines(b.caption))
        elif isinstance(b, CodeBlock):
            fence = "````" if "```" in b.text else "```"
            parts.append(f"{fence}{b.lang}\n{b.text}\n{fence}")
        else:                                            # pragma: no cover - internal misuse
            raise TypeError(f"unknown report block {type(b).__name__}")
    return "\n\n".join(parts) + "\n"


_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 72rem;
       margin: 2rem auto; padding: 0 1rem; color: #1b1b1b; line-height: 1.45; }
h1, h2, h3, h4 { line-height: 1.2; }
table { border-collapse: collapse; margin: 0.8rem 0; font-size: 0.92rem; }
th, td { border: 1px solid #d0d0d0; padding: 0.25rem 0.55rem; }
th { background: #f2f2f2; }
td.r, th.r { text-align: right; font-variant-numeric: tabular-nums; }
td.l, th.l { text-align: left; }
tr.baseline td { background: #f6f6f6; font-style: italic; }
tr.chosen td { background: #eaf4ea; font-weight: 600; }
code, pre { font-family: Menlo, Consolas, monospace; font-size: 0.88rem; }
pre { background: #f6f6f6; padding: 0.6rem; overflow-x: auto; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #e0e0e0; }
figcaption { font-size: 0.88rem; color: #444; }
""".strip()


def to_html(blocks: list, title: str) -> str:
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             f"<title>{html.escape(title)}</title>", f"<style>\n{_CSS}\n</style>", "</head>",
             "<body>"]
    for b in blocks:
        if isinstance(b, Heading):
            parts.append(f"<h{b.level}>{_html_inlines(b.inlines)}</h{b.level}>")
        elif isinstance(b, Para):
            parts.append(f"<p>{_html_inlines(b.inlines)}</p>")
        elif isinstance(b, Bullets):
            parts.append("<ul>" + "".join(f"<li>{_html_inlines(i)}</li>" for i in b.items)
                         + "</ul>")
        elif isinstance(b, Table):
            head = "".join(f'<th class="{a}">{html.escape(h)}</th>'
                           for h, a in zip(b.headers, b.align))
            rows = []
            for k, row in enumerate(b.rows):
                cls = b.row_classes[k] if k < len(b.row_classes) else ""
                attr = f' class="{cls}"' if cls else ""
                cells = "".join(f'<td class="{a}">{_html_inlines(c)}</td>'
                                for c, a in zip(row, b.align))
                rows.append(f"<tr{attr}>{cells}</tr>")
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>" + "".join(rows)
                         + "</tbody></table>")
        elif isinstance(b, Image):
            data = base64.b64encode(b.png).decode("ascii")
            parts.append(f'<figure><img alt="{html.escape(b.alt)}" '
                         f'src="data:image/png;base64,{data}">'
                         f"<figcaption>{_html_inlines(b.caption)}</figcaption></figure>")
        elif isinstance(b, CodeBlock):
            parts.append(f"<pre><code>{html.escape(b.text)}</code></pre>")
        else:                                            # pragma: no cover - internal misuse
            raise TypeError(f"unknown report block {type(b).__name__}")
    parts += ["</body>", "</html>"]
    return "\n".join(parts) + "\n"
