"""The schema the migrations build is exactly the schema the code declares."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from solder.store.database import Database
from solder.store.schema import metadata


def test_migrations_build_the_declared_schema(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'solder.db'}"
    Database(url).migrate()
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), metadata)
            tables = set(inspect(conn).get_table_names())
    finally:
        engine.dispose()
    assert diff == []
    assert set(metadata.tables) <= tables


def test_migrating_twice_changes_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'solder.db'}"
    Database(url).migrate()
    Database(url).migrate()
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), metadata) == []
    finally:
        engine.dispose()
