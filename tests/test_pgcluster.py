"""The private PostgreSQL server really stops and starts again on the same URL."""

from __future__ import annotations

import time

import psycopg
import pytest

from tests.pgcluster import PgCluster, pg_cluster  # noqa: F401  (the fixture)


def select_one(url: str) -> int:
    with psycopg.connect(url, connect_timeout=5) as conn:
        row = conn.execute("SELECT 1").fetchone()
        assert row is not None
        value: int = row[0]
        return value


def test_stop_and_start_again(pg_cluster: PgCluster) -> None:  # noqa: F811
    pg_cluster.create_database("app")
    url = pg_cluster.url("app")
    assert select_one(url) == 1

    began = time.monotonic()
    pg_cluster.stop()
    with pytest.raises(psycopg.OperationalError):
        select_one(url)
    pg_cluster.start()
    assert select_one(url) == 1

    pg_cluster.stop("immediate")
    with pytest.raises(psycopg.OperationalError):
        select_one(url)
    pg_cluster.start()
    assert select_one(url) == 1
    print(f"stop+start twice: {time.monotonic() - began:.2f} s")
