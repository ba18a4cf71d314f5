"""Report tables as LaTeX: booktabs rules, never wider than ``\\textwidth``, unique labels.

Each table is a float to ``\\input`` into a paper that loads ``booktabs`` and ``graphicx``. A
table wider than the text is scaled down to ``\\textwidth`` (never up); one with more than
``max_rows`` rows is split into several floats, each with the header, labelled
``tab:<study>-<table>``, ``tab:<study>-<table>-2``, … The output is plain ASCII: Greek letters
and symbols become math, so pdfLaTeX compiles it without a Unicode setup.
"""

from __future__ import annotations

import unicodedata
from typing import TYPE_CHECKING

from normstudy.report._render import cells

if TYPE_CHECKING:
    from normstudy.report._render import ReportTable

MAX_ROWS = 40
"""Rows per float before a table is split (a page of \\small rows in a plain article)."""

PREAMBLE = r"\usepackage{booktabs}" + "\n" + r"\usepackage{graphicx}"
"""What a document needs to \\input the tables."""

_SPECIAL = {
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
    # In text mode under the default font encoding "<" and ">" print as other glyphs.
    "<": r"\ensuremath{<}",
    ">": r"\ensuremath{>}",
    "|": r"\textbar{}",
}


def _greek(ch: str) -> str:
    name = unicodedata.name(ch).rsplit(" ", 1)[-1].lower().replace("lamda", "lambda")
    return name if "SMALL" in unicodedata.name(ch) else name.capitalize()


_MATH = {
    "±": r"\pm",
    "×": r"\times",
    "÷": r"\div",
    "≤": r"\leq",
    "≥": r"\geq",
    "≈": r"\approx",
    "−": "-",
    "→": r"\to",
    "·": r"\cdot",
    "²": "^2",
    "√": r"\surd",
    "∞": r"\infty",
    # "GREEK SMALL LETTER GAMMA" -> \gamma (Unicode spells lambda "LAMDA").
    **{ch: "\\" + _greek(ch) for ch in "αβγδεζηθικλμνξπρστυφχψωΓΔΘΛΞΠΣΦΨΩ"},
}
_TEXT = {"…": r"\ldots{}", "–": "--", "—": "---", "‘": "`", "’": "'", "“": "``", "”": "''"}


def escape(text: str) -> str:
    """Plain text as ASCII LaTeX: special characters escaped, Greek and symbols as math."""
    out = []
    for ch in text:
        if ch in _SPECIAL:
            out.append(_SPECIAL[ch])
        elif ch in _MATH:
            out.append(rf"\ensuremath{{{_MATH[ch]}}}")
        elif ch in _TEXT:
            out.append(_TEXT[ch])
        elif ord(ch) < 128:
            out.append(ch)
        else:  # é -> e; what has no ASCII form becomes "?" rather than a compile error
            plain = unicodedata.normalize("NFKD", ch).encode("ascii", "ignore").decode()
            out.append(plain or "?")
    return "".join(out)


def latex_table(table: ReportTable, max_rows: int = MAX_ROWS) -> str:
    """The table as one or more booktabs floats (split every ``max_rows`` rows)."""
    body = [
        " & ".join(row) + r" \\"
        for row in cells(table, escape, r"\textbf{{{}}}", r"\underline{{{}}}")
    ]
    chunks = [body[i : i + max_rows] for i in range(0, len(body), max_rows)] or [[]]
    parts = [_float(table, chunk, k, len(chunks)) for k, chunk in enumerate(chunks, 1)]
    need = f"% {table.label}: needs {PREAMBLE.replace(chr(10), ' ')}\n"
    return need + "\n".join(parts)


def _float(table: ReportTable, body: list[str], part: int, parts: int) -> str:
    caption = escape(table.caption)
    label = table.label if part == 1 else f"{table.label}-{part}"
    if part > 1:
        caption = rf"(continued, part {part} of {parts}) {escape(table.caption.split('. ')[0])}."
    notes = [
        r"\par\smallskip{\footnotesize\raggedright " + escape(n) + r"\par}" for n in table.notes
    ]
    lines = [
        r"\begin{table}[tbp]",
        r"\centering",
        rf"\caption{{{caption}}}",
        rf"\label{{{label}}}",
        # Scaled down to the text width when wider, never up (graphicx evaluates \width).
        r"\resizebox{\ifdim\width>\textwidth\textwidth\else\width\fi}{!}{%",
        rf"\begin{{tabular}}{{{_align(table)}}}",
        r"\toprule",
        *_header(table),
        r"\midrule",
        *body,
        r"\bottomrule",
        r"\end{tabular}%",
        "}",
        *(notes if part == parts else []),
        r"\end{table}",
    ]
    return "\n".join(lines) + "\n"


def _align(table: ReportTable) -> str:
    from normstudy.report._stats import MeanStd

    def numeric(j: int) -> bool:
        values = [r[j] for r in table.rows if r[j] is not None]
        return all(isinstance(v, int | float | MeanStd) for v in values)

    return "".join("r" if numeric(j) else "l" for j in range(len(table.columns)))


def _header(table: ReportTable) -> list[str]:
    if not table.groups:
        return [" & ".join(escape(table.header(c)) for c in table.columns) + r" \\"]
    # The group row has one cell per ungrouped column and one \multicolumn per group.
    top, rules, bottom = [], [], []
    for j, column in enumerate(table.columns, 1):
        group = table.group_of(column)
        if group is None:
            top.append("")
            bottom.append(escape(table.header(column)))
            continue
        if column == group[1][0]:
            span = len(group[1])
            top.append(rf"\multicolumn{{{span}}}{{c}}{{{escape(table.header(group[0]))}}}")
            rules.append(rf"\cmidrule(lr){{{j}-{j + span - 1}}}")
        bottom.append(escape(table.subheader(column)))
    return [" & ".join(top) + r" \\", " ".join(rules), " & ".join(bottom) + r" \\"]


def latex_document(fragments: list[str]) -> str:
    """A plain ``article`` holding table fragments: to check that they compile, or to preview."""
    return "\n".join(
        [
            r"\documentclass{article}",
            PREAMBLE,
            r"\begin{document}",
            *fragments,
            r"\end{document}",
            "",
        ]
    )
