"""The schema the migrations build is exactly the schema the code declares, on the
database of this run (SQLite, or PostgreSQL with SOLDER_TEST_DATABASE=postgres)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from solder.store.database import Database
from solder.store.schema import metadata, owned_by_solder
from tests import databases


def empty_database(tmp_path: Path) -> Database:
    url = databases.database_url(tmp_path, empty=True) or f"sqlite:///{tmp_path / 'solder.db'}"
    return Database(url)


def differences(db: Database) -> tuple[list[object], set[str]]:
    engine = create_engine(db.sync_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"include_name": owned_by_solder})
            diff = compare_metadata(context, metadata)
            tables = set(inspect(conn).get_table_names())
    finally:
        engine.dispose()
    return diff, tables


def test_migrations_build_the_declared_schema(tmp_path: Path) -> None:
    db = empty_database(tmp_path)
    db.migrate()
    diff, tables = differences(db)
    assert diff == []
    assert set(metadata.tables) <= tables


def test_migrating_twice_changes_nothing(tmp_path: Path) -> None:
    db = empty_database(tmp_path)
    db.migrate()
    db.migrate()
    assert differences(db)[0] == []


@pytest.mark.skipif(not databases.on_postgres(), reason="procrastinate's queue is PostgreSQL's")
def test_migrations_install_procrastinates_queue(tmp_path: Path) -> None:
    from procrastinate import App, PsycopgConnector

    db = empty_database(tmp_path)
    db.migrate()

    async def check() -> bool:
        app = App(connector=PsycopgConnector(conninfo=db.libpq_url))
        async with app.open_async():
            return await app.check_connection_async()

    assert asyncio.run(check())
    _, tables = differences(db)
    assert {"procrastinate_jobs", "procrastinate_workers"} <= tables
