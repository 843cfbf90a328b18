"""Alembic, driven from code: `solder serve` migrates before it listens."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.engine import Engine


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", "solder.store:migrations")
    return config


def upgrade(engine: Engine, revision: str = "head", *, lock: int | None = None) -> None:
    """Apply every migration up to `revision` on `engine`, in one transaction.

    With `lock` (PostgreSQL), the transaction first takes that advisory lock, so that
    processes starting at once migrate one at a time: the later ones find nothing to do.
    """
    config = alembic_config()
    with engine.begin() as connection:
        if lock is not None:
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock})
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
