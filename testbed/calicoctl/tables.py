"""Text tables as calicoctl prints them (pure formatting, no I/O).

* :func:`tab_table` - ``calicoctl get`` output: Go ``text/tabwriter`` with
  minwidth 5, padding 3, space padding (columns separated by >= 3 spaces).
* :func:`box_table` - ``calicoctl ipam show`` output: olekukonko/tablewriter's
  ``+----+`` boxes, upper-case centred headers, numbers right-aligned, text left.
* :func:`gfmt` / :func:`usage_cell` - Go's ``%.5g`` and ``"%.5g (%.0f%%)"``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_NUMERIC = re.compile(r"^-?\d+(\.\d+)?([eE][-+]?\d+)?$")


def tab_table(header: Sequence[str], rows: Sequence[Sequence[str]], minwidth: int = 5,
              padding: int = 3) -> str:
    """Columns padded to ``max(len) + padding`` (at least ``minwidth``); trailing blanks trimmed."""
    cols = len(header)
    widths = [max(minwidth, max((len(str(r[i])) for r in [header, *rows]), default=0) + padding)
              for i in range(cols)]
    lines = []
    for r in [header, *rows]:
        lines.append("".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return "\n".join(lines) + "\n"


def _center(text: str, width: int) -> str:
    gap = width - len(text)
    left = gap // 2
    return " " * left + text + " " * (gap - left)


def box_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A tablewriter-style box table."""
    header = [h.upper() for h in header]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    sep = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    out = [sep, "| " + " | ".join(_center(h, w) for h, w in zip(header, widths, strict=True)) + " |", sep]
    for r in rows:
        cells = []
        for c, w in zip(r, widths, strict=True):
            c = str(c)
            cells.append(c.rjust(w) if _NUMERIC.match(c) else c.ljust(w))
        out.append("| " + " | ".join(cells) + " |")
    out.append(sep)
    return "\n".join(out) + "\n"


def gfmt(value: float) -> str:
    """Go's ``%.5g``."""
    return f"{value:.5g}"


def usage_cell(part: float, total: float) -> str:
    """``"N (P%)"`` with Go's ``%.5g (%.0f%%)``."""
    pct = 100.0 * part / total if total else 0.0
    return f"{gfmt(part)} ({pct:.0f}%)"
