"""The hot read path's own connections: SQLite in the event loop's thread, psycopg's pool."""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest

from solder.errors import Unavailable
from solder.store.database import Database
from solder.store.prepared import APPLICATION_NAME
from tests import databases
from tests.conftest import Api, Server
from tests.test_logs_pagination import echo_workflow, run_all

postgres_only = pytest.mark.skipif(
    not databases.on_postgres(), reason="PostgreSQL only (SOLDER_TEST_DATABASE=postgres)"
)


@postgres_only
def test_logs_read_right_after_the_server_dropped_the_connections_succeed(
    server: Server, api: Api
) -> None:
    """A restart or a failover closes every pooled connection: the next page of logs is
    read on a new one, not refused."""
    user_id, workflow_id = api.install(echo_workflow())
    (execution_id,) = run_all(api, user_id, workflow_id, 1)
    assert [log["executionId"] for log in api.logs(workflow_id)] == [execution_id]
    with psycopg.connect(server.settings.database_url, autocommit=True) as admin:
        dropped = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = %s AND datname = current_database()",
            (APPLICATION_NAME,),
        ).fetchall()
    assert dropped, "the logs were read on the reader's own connections"
    for _ in range(3):  # every connection the pool kept is a dropped one
        assert [log["executionId"] for log in api.logs(workflow_id)] == [execution_id]


def test_an_unreachable_postgresql_is_unavailable_within_the_connect_timeout() -> None:
    async def read() -> None:
        db = Database("postgresql://solder@127.0.0.1:9/solder")  # the discard port: closed
        try:
            async with db.read_inline():
                pass
        finally:
            await db.dispose()

    started = time.monotonic()
    with pytest.raises(Unavailable):
        asyncio.run(read())
    assert time.monotonic() - started < 10
