"""`solder vacuum`: the whole-database vacuums, run once by an operator.

They are here and not in queries.py because neither can run in a transaction, and every
connection `Database` hands out is in one.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import psycopg

# The tables whose rows retention and finished executions delete.
CHURNING_TABLES = ("executions", "steps", "idempotency_keys")


def sqlite_needs_switch(path: Path) -> bool:
    """Whether the SQLite file predates incremental auto-vacuum."""
    with closing(sqlite3.connect(path, timeout=10)) as conn:
        mode: int = conn.execute("PRAGMA auto_vacuum").fetchone()[0]
    return mode != 2


def switch_sqlite_to_incremental(path: Path) -> None:
    """Rewrite the SQLite file with incremental auto-vacuum: the file shrinks to what it
    holds, and from then on retention can give freed pages back.

    VACUUM copies the whole database (it needs as much free disk) and holds the write
    lock while it runs: writers of a running server wait, up to its 10 s busy timeout.
    """
    with closing(sqlite3.connect(path, timeout=60, isolation_level=None)) as conn:
        conn.execute("PRAGMA busy_timeout=60000")
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def checkpoint_sqlite(path: Path) -> None:
    """Copy the WAL into the file and truncate both, so freed space shows on disk now."""
    with closing(sqlite3.connect(path, timeout=10, isolation_level=None)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def vacuum_postgres(libpq_url: str) -> None:
    """VACUUM (ANALYZE) the tables that churn: their dead rows become reusable space now
    rather than when autovacuum comes by (if it is on)."""
    with psycopg.connect(libpq_url, autocommit=True) as conn:
        conn.execute(f"VACUUM (ANALYZE) {', '.join(CHURNING_TABLES)}")
