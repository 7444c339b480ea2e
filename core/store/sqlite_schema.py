"""Growing an SQLite table that older versions created: the one place columns are added to a file in use.

A column added after a table first shipped is added to an existing file with `ALTER TABLE ... ADD COLUMN`
(old rows read its default, NULL unless the column's SQL says otherwise). Two processes adding the same column
at once is harmless: the loser finds it there.
"""

from __future__ import annotations

import sqlite3
from typing import Iterable


def add_missing_columns(db: sqlite3.Connection, table: str, columns: Iterable[tuple[str, str]]) -> None:
    """Add each (name, SQL type and default) of `columns` that `table` lacks."""
    have = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
    for name, kind in columns:
        if name in have:
            continue
        try:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
        except sqlite3.OperationalError as e:
            if "duplicate column" not in str(e):
                raise
