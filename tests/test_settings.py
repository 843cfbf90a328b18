"""Settings whose defaults depend on the deployment."""

from __future__ import annotations

from pathlib import Path

from solder.settings import Settings

POSTGRES = "postgresql+psycopg://solder@db.example/solder"


def test_a_process_runs_8_executions_at_once_on_sqlite_and_16_on_postgresql(
    tmp_path: Path,
) -> None:
    on_sqlite = Settings(
        data_dir=tmp_path,
        database_url=f"sqlite:///{tmp_path / 'solder.db'}",
        worker_concurrency=None,
    )
    assert on_sqlite.concurrency == 8
    on_postgres = Settings(data_dir=tmp_path, database_url=POSTGRES, worker_concurrency=None)
    assert on_postgres.concurrency == 16
    chosen = Settings(data_dir=tmp_path, database_url=POSTGRES, worker_concurrency=3)
    assert chosen.concurrency == 3
