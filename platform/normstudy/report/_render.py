"""Rendering report tables as Markdown, CSV, LaTeX and HTML, and writing them atomically."""

from __future__ import annotations

import csv
import html
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from normstudy.report import _format
from normstudy.report._stats import MeanStd

Format = Literal["md", "csv", "latex", "html"]
EXTENSIONS: dict[str, str] = {"md": "md", "csv": "csv", "latex": "tex", "html": "html"}


@dataclass
class ReportTable:
    """A table to render: raw cell values plus how to show them.

    Attributes:
        name: File stem when written (``trials``, ``configs``); with ``study`` it makes the
            LaTeX label ``tab:<study>-<name>``.
        caption: States what the numbers are and the number convention.
        columns: Column ids (config columns: their dotted key; CSV headers are these ids).
        rows: Raw values: str, int, float, `MeanStd`, or None (empty cell).
        labels: Header text of a column (default: its id; "(%)" is added to percent columns).
        sublabels: Header text of a column under its group's header (LaTeX and HTML).
        groups: Header groups spanning columns: (the column whose header names the group,
            the member columns in order).
        keys: Config columns -> their dotted key; these values get 3 significant digits.
        percent: Metric columns shown ×100 with ``decimals`` decimals (accuracies).
        decimals: Decimals of percent columns (others get 3 significant digits).
        pvalues: Columns formatted as p-values.
        bold: (row index, column) cells shown in bold.
        underline: (row index, column) cells underlined.
        notes: Lines shown under the table (what a key stands for, why a test was not run).
        clip: Text columns cut to this many characters when shown (CSV keeps them whole).
        study: The study's name (labels and anchors).
    """

    name: str
    caption: str
    columns: list[str]
    rows: list[list[Any]]
    labels: dict[str, str] = field(default_factory=dict)
    sublabels: dict[str, str] = field(default_factory=dict)
    groups: list[tuple[str, list[str]]] = field(default_factory=list)
    keys: dict[str, str] = field(default_factory=dict)
    percent: set[str] = field(default_factory=set)
    decimals: int = 1
    pvalues: set[str] = field(default_factory=set)
    bold: set[tuple[int, str]] = field(default_factory=set)
    underline: set[tuple[int, str]] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)
    clip: dict[str, int] = field(default_factory=dict)
    study: str = ""

    def records(self) -> list[dict[str, Any]]:
        """Rows as dicts keyed by column id."""
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]

    def header(self, column: str) -> str:
        """The column's header on one header row (Markdown, and LaTeX/HTML outside groups)."""
        text = self.labels.get(column, column)
        return f"{text} (%)" if column in self.percent else text

    def subheader(self, column: str) -> str:
        """The column's header under its group's header."""
        return self.sublabels.get(column, self.header(column))

    def group_of(self, column: str) -> tuple[str, list[str]] | None:
        return next((g for g in self.groups if column in g[1]), None)

    @property
    def label(self) -> str:
        """The LaTeX label, unique across studies and tables."""
        return f"tab:{self.study}-{self.name}" if self.study else f"tab:{self.name}"

    def text(self, column: str, value: Any) -> str:
        """A cell as text, by the number conventions of `normstudy.report._format`."""
        if value is None:
            return ""
        if isinstance(value, str) and column in self.clip and len(value) > self.clip[column]:
            return value[: self.clip[column] - 1] + "…"
        percent = column in self.percent
        if isinstance(value, MeanStd):
            return _format.mean_std(value.mean, value.std, percent=percent, decimals=self.decimals)
        if column in self.keys:
            return _format.config_value(value)
        if not isinstance(value, float):
            return str(value)
        if column in self.pvalues:
            return _format.pvalue(value)
        return _format.metric_value(value, percent=percent, decimals=self.decimals)


def render(table: ReportTable, format: Format) -> str:
    """The table as Markdown, CSV (raw values, mean and std in two columns), LaTeX or HTML.

    Example:
        >>> tables = summary_tables(results, "val/acc", "max")  # doctest: +SKIP
        >>> print(render(tables["configs"], "md"))  # doctest: +SKIP
    """
    from normstudy.report._latex import latex_table

    renderers: dict[str, Callable[[ReportTable], str]] = {
        "md": _markdown,
        "csv": _csv,
        "latex": latex_table,
        "html": html_table,
    }
    if format not in renderers:
        raise ValueError(f"format must be one of {sorted(renderers)}, got {format!r}")
    return renderers[format](table)


def cells(
    table: ReportTable, escape: Callable[[str], str], bold: str, underline: str
) -> list[list[str]]:
    """Formatted, escaped cells with the style templates (``{}`` = content) applied."""
    out = []
    for r, row in enumerate(table.rows):
        texts = []
        for column, value in zip(table.columns, row, strict=True):
            text = escape(table.text(column, value))
            if text and (r, column) in table.underline:
                text = underline.format(text)
            if text and (r, column) in table.bold:
                text = bold.format(text)
            texts.append(text)
        out.append(texts)
    return out


def _markdown(table: ReportTable) -> str:
    def escape(text: str) -> str:
        return text.replace("|", "\\|")

    lines = [f"{table.caption}", ""] if table.caption else []
    lines.append("| " + " | ".join(escape(table.header(c)) for c in table.columns) + " |")
    lines.append("|" + "|".join("---" for _ in table.columns) + "|")
    for row in cells(table, escape, "**{}**", "<u>{}</u>"):
        lines.append("| " + " | ".join(row) + " |")
    if table.notes:
        lines += ["", *(f"{note}  " for note in table.notes)]
    return "\n".join(lines) + "\n"


def _csv(table: ReportTable) -> str:
    # Raw values for machines: column ids (dotted keys), no scaling, full precision, no styling.
    split = {
        c for j, c in enumerate(table.columns) if any(isinstance(r[j], MeanStd) for r in table.rows)
    }
    header: list[str] = []
    for column in table.columns:
        header += [f"{column} mean", f"{column} std"] if column in split else [column]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in table.rows:
        out: list[Any] = []
        for column, value in zip(table.columns, row, strict=True):
            if column in split:
                out += [value.mean, value.std] if isinstance(value, MeanStd) else [None, None]
            else:
                out.append(value)
        writer.writerow(["" if v is None else v for v in out])
    return buffer.getvalue()


def html_table(table: ReportTable) -> str:
    """The table as an HTML fragment (``<table>`` and its notes); headers of config columns
    carry their dotted key as a tooltip."""

    def th(column: str, text: str, rowspan: int = 1) -> str:
        key = table.keys.get(column)
        title = f' title="{html.escape(key)}"' if key else ""
        span = f' rowspan="{rowspan}"' if rowspan > 1 else ""
        return f"<th{title}{span}>{html.escape(text)}</th>"

    head = []
    if table.groups:
        first, second = [], []
        for column in table.columns:
            group = table.group_of(column)
            if group is None:
                first.append(th(column, table.header(column), rowspan=2))
            else:
                if column == group[1][0]:
                    name = html.escape(table.header(group[0]))
                    first.append(f'<th colspan="{len(group[1])}" class="group">{name}</th>')
                second.append(th(column, table.subheader(column)))
        head = [f"<tr>{''.join(first)}</tr>", f"<tr>{''.join(second)}</tr>"]
    else:
        head = [f"<tr>{''.join(th(c, table.header(c)) for c in table.columns)}</tr>"]
    rows = [
        "<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>"
        for row in cells(table, html.escape, "<b>{}</b>", "<u>{}</u>")
    ]
    notes = [f'<p class="note">{html.escape(n)}</p>' for n in table.notes]
    anchor = table.label.replace(":", "-")
    return (
        "\n".join(
            [
                f'<table class="report" id="{html.escape(anchor)}">',
                f"<caption>{html.escape(table.caption)}</caption>",
                f"<thead>{''.join(head)}</thead>",
                "<tbody>",
                *rows,
                "</tbody>",
                "</table>",
                *notes,
            ]
        )
        + "\n"
    )


def write_text_atomic(path: Path, text: str) -> None:
    """Replaces ``path`` whole, so a reader never sees half a report (the storage layer's
    write: beside it, flushed, renamed over it)."""
    from normstudy.storage import as_location

    as_location(path).write_text(text)
