"""CSV cells a spreadsheet will not run: the one escaping every CSV writer (core and pages) goes through.

A cell that starts with `=`, `+`, `-`, `@`, a tab or a carriage return is a formula to Excel, LibreOffice and
Google Sheets (`=HYPERLINK(...)` in a note becomes a live link, and worse). As OWASP advises for CSV injection,
such text cells get a leading single quote, which spreadsheets show as text. Numbers are written as they are
(a negative number is not a formula), so numeric columns still read back as numbers.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: Any) -> Any:
    """`value` with a leading ' when it is text a spreadsheet would take for a formula; anything else as is."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def safe_row(row: Iterable[Any]) -> list[Any]:
    return [safe_cell(v) for v in row]


def safe_dict(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: safe_cell(v) for k, v in row.items()}


def safe_frame(df: Any) -> Any:
    """A copy of a pandas DataFrame with its text cells (and its index and column names) escaped."""
    out = df.copy()
    for column in out.columns:
        if out[column].dtype == object or str(out[column].dtype) in ("string", "str"):
            out[column] = out[column].map(safe_cell)
    out.columns = [safe_cell(c) for c in out.columns]
    out.index = out.index.map(safe_cell)
    return out
