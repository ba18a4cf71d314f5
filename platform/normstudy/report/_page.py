"""One standalone, styled HTML page per study: its tables and its figures.

Standalone: the style is inline and the figures are embedded as PNG data, so the single file can
be mailed, attached or opened from a bucket; links point to the PDF versions beside it.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from normstudy.report._render import html_table

if TYPE_CHECKING:
    from normstudy.report._context import StudyContext
    from normstudy.report._render import ReportTable


@dataclass(frozen=True)
class FigureFile:
    """A written figure: its stem, what it shows, its PNG bytes and files relative to the page."""

    name: str
    title: str
    png: bytes
    files: tuple[str, ...] = ()


_STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d2329;
       max-width: 1180px; margin: 2em auto; padding: 0 1.5em; }
h1 { font-size: 1.6em; margin-bottom: .2em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
p.meta { color: #59636e; margin-top: 0; }
table.report { border-collapse: collapse; margin: 1em 0 .4em; font-variant-numeric: tabular-nums; }
table.report caption { caption-side: top; text-align: left; color: #444; padding-bottom: .5em;
                       max-width: 70em; }
table.report th, table.report td { padding: .25em .7em; text-align: right; white-space: nowrap; }
table.report th { border-bottom: 1px solid #333; font-weight: 600; }
table.report th.group { border-bottom: 1px solid #999; text-align: center; }
table.report thead tr:first-child th { border-top: 2px solid #333; }
table.report tbody tr:last-child td { border-bottom: 2px solid #333; }
table.report tbody tr:nth-child(even) { background: #f6f8fa; }
table.report td:first-child, table.report th:first-child { text-align: left; }
th[title] { text-decoration: underline dotted; cursor: help; }
p.note { color: #59636e; font-size: .9em; margin: .2em 0; }
.scroll { overflow-x: auto; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #444; font-size: .9em; }
"""


def study_page(
    study: str,
    tables: Sequence[ReportTable],
    figures: Sequence[FigureFile] = (),
    context: StudyContext | None = None,
) -> str:
    """The page: a heading with the setting, each table, then each figure."""
    title = html.escape(study or "normstudy report")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        f'<head><meta charset="utf-8"><title>{title} · normstudy report</title>',
        f"<style>{_STYLE}</style></head>",
        "<body>",
        f"<h1>{title}</h1>",
    ]
    if context is not None:
        parts.append(f'<p class="meta">{html.escape(context.text())}</p>')
    for table in tables:
        parts += [f"<h2>{html.escape(table.name)}</h2>", '<div class="scroll">']
        parts += [html_table(table), "</div>"]
    if figures:
        parts.append("<h2>figures</h2>")
        parts += [_figure(f) for f in figures]
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


def _figure(figure: FigureFile) -> str:
    data = base64.b64encode(figure.png).decode("ascii")
    links = " ".join(
        f'<a href="{html.escape(f)}">{html.escape(f.rsplit(".", 1)[-1].upper())}</a>'
        for f in figure.files
    )
    return (
        f'<figure id="fig-{html.escape(figure.name)}">'
        f'<img src="data:image/png;base64,{data}" alt="{html.escape(figure.title)}">'
        f"<figcaption>{html.escape(figure.title)} {links}</figcaption></figure>"
    )
