"""The database each test runs on: a SQLite file (default) or, with
SOLDER_TEST_DATABASE=postgres, its own PostgreSQL database copied from a migrated template.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

BACKEND = os.environ.get("SOLDER_TEST_DATABASE", "sqlite")
POSTGRES = os.environ.get("SOLDER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432")
# One template per xdist worker (workers prepare theirs at the same time) and per test
# run: two runs against one server (two checkouts) must not drop each other's.
_RUN = os.environ.get("PYTEST_XDIST_TESTRUNUID", str(os.getpid()))[:12]
TEMPLATE = f"solder_test_template_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}_{_RUN}"
_created: dict[Path, str] = {}


def on_postgres() -> bool:
    return BACKEND == "postgres"


def _admin() -> object:
    import psycopg

    return psycopg.connect(f"{POSTGRES}/postgres", autocommit=True, connect_timeout=3)


def postgres_reachable() -> str | None:
    """None when PostgreSQL answers; why not, otherwise."""
    try:
        with _admin():  # type: ignore[attr-defined]
            return None
    except Exception as exc:
        return f"PostgreSQL at {POSTGRES} is unreachable: {exc}"


def prepare_template() -> None:
    """Build the migrated template database every test database is copied from."""
    import psycopg

    from solder.store.database import Database

    with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {TEMPLATE} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {TEMPLATE}")
    Database(f"{POSTGRES}/{TEMPLATE}").migrate()


def database_url(data_dir: Path, *, empty: bool = False) -> str:
    """The database of a data directory: '' (SQLite under it) or a PostgreSQL database,
    copied from the migrated template unless `empty`."""
    if not on_postgres():
        return ""
    if data_dir not in _created:
        import psycopg

        name = "solder_test_" + hashlib.sha1(str(data_dir).encode()).hexdigest()[:20]
        with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            admin.execute(f"CREATE DATABASE {name} TEMPLATE {'template0' if empty else TEMPLATE}")
        _created[data_dir] = name
    return f"{POSTGRES}/{_created[data_dir]}"


def drop_all() -> None:
    """Drop this run's databases and its template."""
    if not on_postgres():
        return
    import psycopg

    with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as admin:
        for name in (*_created.values(), TEMPLATE):
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    _created.clear()


def rows(data_dir: Path, sql: str) -> list[tuple[object, ...]]:
    """The rows a query gives on a data directory's database, whichever backend it is."""
    if on_postgres():
        import psycopg

        with psycopg.connect(database_url(data_dir)) as conn:
            return [tuple(row) for row in conn.execute(sql)]
    import sqlite3
    from contextlib import closing

    with closing(sqlite3.connect(data_dir / "solder.db")) as lite:
        return [tuple(row) for row in lite.execute(sql)]


def execute(data_dir: Path, sql: str) -> None:
    """Change a data directory's database behind Solder's back (to inject a fault)."""
    if on_postgres():
        import psycopg

        with psycopg.connect(database_url(data_dir)) as conn:
            conn.execute(sql)
        return
    import sqlite3
    from contextlib import closing

    with closing(sqlite3.connect(data_dir / "solder.db", timeout=10)) as lite, lite:
        lite.execute(sql)


def stored_logs(data_dir: Path) -> dict[str, bytes]:
    """Every stored log document, decompressed with its tenant's dictionary if it needs
    one, by execution id."""
    from solder.store import codec

    dictionaries: dict[tuple[object, int | None], codec.Dictionary] = {}
    for tenant_id, id_, content in rows(
        data_dir, "SELECT tenant_id, id, content FROM log_dictionaries"
    ):
        assert isinstance(id_, int)
        assert isinstance(content, bytes)
        dictionaries[tenant_id, id_] = codec.Dictionary(str(tenant_id), id_, content)
    found = {}
    for tenant_id, execution_id, log in rows(
        data_dir, "SELECT tenant_id, id, log FROM executions WHERE log IS NOT NULL"
    ):
        assert isinstance(log, bytes)
        needed = codec.dictionary_id(log)
        found[str(execution_id)] = codec.unpack(log, dictionaries.get((tenant_id, needed)))
    return found


def stored_bytes(data_dir: Path) -> dict[str, bytes]:
    """Everything the database holds, as bytes, by where it lies.

    SQLite: the database's files as they are on disk (freed pages included).
    PostgreSQL: every value of every table, binary values as their raw bytes.
    Both: the stored log documents decompressed, since compression would hide from a
    byte search what they hold.
    """
    logs = b"\n".join(stored_logs(data_dir).values())
    if not on_postgres():
        files = {
            f.name: f.read_bytes()
            for f in data_dir.iterdir()
            if f.name.startswith("solder.db") and f.is_file()  # not solder.db.processes/
        }
        return {**files, "log documents": logs}
    from solder.store.schema import metadata

    found: dict[str, bytes] = {}
    for table in metadata.sorted_tables:
        values = rows(data_dir, f"SELECT * FROM {table.name}")
        found[table.name] = b"\n".join(
            value if isinstance(value, bytes) else str(value).encode()
            for row in values
            for value in row
        )
    found["log documents"] = logs
    return found
