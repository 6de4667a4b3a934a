"""
Tables as text for the terminal, Markdown, CSV or LaTeX: one :class:`Table` (a head and rows of cells), rendered by
:func:`render`. ``art-some report --format`` picks the form; the numbers are the same in every form.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field

FORMATS = ("text", "markdown", "csv", "latex")
# LaTeX's special characters in text cells (file names hold underscores, headings percent signs).
_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


@dataclass
class Table:
    """
    A table of text cells: ``head`` names the columns, each row has one cell per column. The first ``labels``
    columns hold names (left-aligned), the rest numbers (right-aligned).
    """

    head: list[str]
    rows: list[list[str]] = field(default_factory=list)
    labels: int = 1

    def __post_init__(self):
        for row in self.rows:
            if len(row) != len(self.head):
                raise ValueError(f"a table row has {len(row)} cells for {len(self.head)} columns: {row}")


def render(table: Table, form: str = "text") -> str:
    """
    ``table`` as text: ``"text"`` (aligned columns), ``"markdown"`` (a pipe table), ``"csv"`` (comma-separated,
    quoted where needed) or ``"latex"`` (a ``tabular`` with booktabs rules; special characters escaped).
    """
    if form not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {form!r}")
    return {"text": _text, "markdown": _markdown, "csv": _csv, "latex": _latex}[form](table)


def _text(table: Table) -> str:
    rows = [table.head, *table.rows]
    widths = [max(len(row[c]) for row in rows) for c in range(len(table.head))]
    return "\n".join("  ".join(v.ljust(w) if c < table.labels else v.rjust(w)
                               for c, (v, w) in enumerate(zip(row, widths))).rstrip() for row in rows)


def _markdown(table: Table) -> str:
    def line(cells):
        return "| " + " | ".join(c.replace("|", r"\|") for c in cells) + " |"

    rule = ["---" if c < table.labels else "---:" for c in range(len(table.head))]
    return "\n".join([line(table.head), "|" + "|".join(rule) + "|", *(line(row) for row in table.rows)])


def _csv(table: Table) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(table.head)
    writer.writerows(table.rows)
    return out.getvalue().rstrip("\n")


def _latex(table: Table) -> str:
    def line(cells):
        return " & ".join("".join(_LATEX_ESCAPES.get(ch, ch) for ch in c) for c in cells) + r" \\"

    align = "l" * table.labels + "r" * (len(table.head) - table.labels)
    return "\n".join([rf"\begin{{tabular}}{{{align}}}", r"\toprule", line(table.head), r"\midrule",
                      *(line(row) for row in table.rows), r"\bottomrule", r"\end{tabular}"])
