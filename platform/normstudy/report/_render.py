"""Rendering report tables as Markdown, CSV, LaTeX and HTML, and writing them atomically."""

from __future__ import annotations

import csv
import html
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from normstudy.report._stats import MeanStd

Format = Literal["md", "csv", "latex", "html"]
EXTENSIONS: dict[str, str] = {"md": "md", "csv": "csv", "latex": "tex", "html": "html"}


@dataclass
class ReportTable:
    """A table to render: raw cell values plus how to show them.

    Attributes:
        name: File stem when written (``trials``, ``configs``).
        caption: States what the numbers are and the number convention.
        columns: Column names.
        rows: Raw values: str, int, float, `MeanStd`, or None (empty cell).
        percent: Columns shown ×100 with 2 decimals (accuracies); other floats get 4.
        pvalues: Columns formatted as p-values.
        verbatim: Columns whose numbers are shown as given (config values: 1e-05 stays 1e-05).
        bold: (row index, column) cells shown in bold (significant).
        underline: (row index, column) cells underlined (best mean).
    """

    name: str
    caption: str
    columns: list[str]
    rows: list[list[Any]]
    percent: set[str] = field(default_factory=set)
    pvalues: set[str] = field(default_factory=set)
    verbatim: set[str] = field(default_factory=set)
    bold: set[tuple[int, str]] = field(default_factory=set)
    underline: set[tuple[int, str]] = field(default_factory=set)

    def records(self) -> list[dict[str, Any]]:
        """Rows as dicts keyed by column."""
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


def render(table: ReportTable, format: Format) -> str:
    """The table as Markdown, CSV (raw values, mean and std in two columns), LaTeX or HTML.

    Example:
        >>> tables = summary_tables(results, "val/acc", "max")  # doctest: +SKIP
        >>> print(render(tables["configs"], "md"))  # doctest: +SKIP
    """
    renderers = {"md": _markdown, "csv": _csv, "latex": _latex, "html": _html}
    if format not in renderers:
        raise ValueError(f"format must be one of {sorted(renderers)}, got {format!r}")
    return renderers[format](table)


def _text(table: ReportTable, column: str, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, MeanStd):
        mean = _text(table, column, value.mean)
        return mean if value.std is None else f"{mean} ± {_text(table, column, value.std)}"
    if not isinstance(value, float) or column in table.verbatim:
        return str(value)
    if math.isnan(value):
        return "nan"
    if column in table.pvalues:
        return f"{value:.3f}" if value >= 0.001 else f"{value:.1e}"
    return f"{100 * value:.2f}" if column in table.percent else f"{value:.4f}"


def _header(table: ReportTable, column: str) -> str:
    return f"{column} (%)" if column in table.percent else column


def _cells(table: ReportTable, escape: Any, bold: str, underline: str) -> list[list[str]]:
    """Formatted, escaped cells with the style templates (``{}`` = content) applied."""
    out = []
    for r, row in enumerate(table.rows):
        cells = []
        for column, value in zip(table.columns, row, strict=True):
            text = escape(_text(table, column, value))
            if (r, column) in table.underline:
                text = underline.format(text)
            if (r, column) in table.bold:
                text = bold.format(text)
            cells.append(text)
        out.append(cells)
    return out


def _markdown(table: ReportTable) -> str:
    def escape(text: str) -> str:
        return text.replace("|", "\\|")

    lines = [f"{table.caption}", ""] if table.caption else []
    lines.append("| " + " | ".join(escape(_header(table, c)) for c in table.columns) + " |")
    lines.append("|" + "|".join("---" for _ in table.columns) + "|")
    for cells in _cells(table, escape, "**{}**", "<u>{}</u>"):
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _csv(table: ReportTable) -> str:
    # Raw values for machines: no percent scaling, full precision, no styling.
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


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def _latex_escape(text: str) -> str:
    escaped = "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)
    # "<" and ">" in text mode print as other glyphs under LaTeX's default font encoding.
    return escaped.replace("±", r"$\pm$").replace("<", "$<$").replace(">", "$>$")


def _latex(table: ReportTable) -> str:
    align = "".join(
        "r" if all(isinstance(r[j], int | float | MeanStd | None) for r in table.rows) else "l"
        for j in range(len(table.columns))
    )
    header = " & ".join(_latex_escape(_header(table, c)) for c in table.columns)
    body = [
        " & ".join(c) + r" \\"
        for c in _cells(table, _latex_escape, r"\textbf{{{}}}", r"\underline{{{}}}")
    ]
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{_latex_escape(table.caption)}}}",
        rf"\label{{tab:{table.name}}}",
        rf"\begin{{tabular}}{{{align}}}",
        r"\hline",
        header + r" \\",
        r"\hline",
        *body,
        r"\hline",
        r"\end{tabular}",
        r"\end{table}",
    ]
    return "\n".join(lines) + "\n"


def _html(table: ReportTable) -> str:
    head = "".join(f"<th>{html.escape(_header(table, c))}</th>" for c in table.columns)
    rows = [
        "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"
        for cells in _cells(table, html.escape, "<b>{}</b>", "<u>{}</u>")
    ]
    return (
        "\n".join(
            [
                "<table>",
                f"<caption>{html.escape(table.caption)}</caption>",
                f"<thead><tr>{head}</tr></thead>",
                "<tbody>",
                *rows,
                "</tbody>",
                "</table>",
            ]
        )
        + "\n"
    )


def write_text_atomic(path: Path, text: str) -> None:
    """Replaces ``path`` whole, so a reader never sees half a report (the storage layer's
    write: beside it, flushed, renamed over it)."""
    from normstudy.storage import as_location

    as_location(path).write_text(text)
