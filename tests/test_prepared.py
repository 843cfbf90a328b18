"""The hot read path's own connections: SQLite in the event loop's thread, psycopg's pool."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sqlite3
import time
from pathlib import Path

import httpx
import psycopg
import pytest
from sqlalchemy import event, text

from solder.errors import Unavailable
from solder.store import prepared, queue
from solder.store.database import Database
from solder.store.prepared import APPLICATION_NAME
from tests import databases
from tests.conftest import Api, Server
from tests.test_logs_pagination import echo_workflow, run_all, slow_workflow, until
from tests.upstream import Upstream

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


def test_closing_the_database_waits_for_a_write_under_way_and_closes_its_connection(
    tmp_path: Path,
) -> None:
    """A write still under way as the database closes (by a task the stop did not wait
    for) commits, and its connection is closed with the others. Given back after the
    pool was disposed, it went into the old pool, which nobody closes: on PostgreSQL a
    session held until the garbage collector found it (and psycopg's ResourceWarning
    then)."""
    databases.execute(tmp_path, "CREATE TABLE closing (n INTEGER)")
    url = databases.database_url(tmp_path) or f"sqlite:///{tmp_path / 'solder.db'}"
    opened: list[object] = []
    closed: list[object] = []

    async def run() -> None:
        db = Database(url)
        event.listen(db.engine.sync_engine.pool, "connect", lambda c, _: opened.append(c))
        event.listen(db.engine.sync_engine.pool, "close", lambda c, _: closed.append(c))

        async def write() -> None:
            async with db.write() as conn:
                await asyncio.sleep(0.3)
                await conn.execute(text("INSERT INTO closing VALUES (1)"))

        writing = asyncio.create_task(write())
        await asyncio.sleep(0.05)
        await db.dispose()
        await writing

    asyncio.run(run())
    assert databases.rows(tmp_path, "SELECT n FROM closing") == [(1,)]
    assert opened
    assert len(closed) == len(opened), "every connection opened was closed"
    if databases.on_postgres():
        sessions = databases.rows(
            tmp_path,
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        assert sessions == [(0,)]


sqlite_only = pytest.mark.skipif(
    databases.on_postgres(), reason="SQLite only: its write lock and its WAL"
)


@sqlite_only
def test_runs_wait_for_another_process_holding_the_write_lock_then_finish(
    server: Server, api: Api, upstream: Upstream
) -> None:
    """Steps are written in the event loop's thread, which must never wait on a lock: while
    another process (the CLI, a backup) holds SQLite's write lock, they are written by a
    connection that waits, and the runs end once it lets go."""
    workflow_id, user_id, blocks = slow_workflow(api, upstream)
    upstream.hold()
    try:
        started = [api.run(user_id, workflow_id, {"n": n}) for n in range(3)]
        until(lambda: len(upstream.requests) == 3)
        holder = sqlite3.connect(server.settings.data_dir / "solder.db", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
    finally:
        upstream.release()  # the calls end: their steps wait for the lock
    try:
        time.sleep(0.5)
        # The event loop is not blocked: the server answers at once.
        assert httpx.get(f"{server.base_url}/health", timeout=3).status_code == 200
        assert all(log["stoppedAt"] is None for log in api.logs(workflow_id))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    for execution_id in started:
        log = api.wait_for(workflow_id, execution_id)
        assert [result["connectorId"] for result in log["results"]] == blocks


@sqlite_only
def test_what_runs_write_reaches_the_database_file_not_just_its_wal(
    server: Server, api: Api, tmp_path: Path
) -> None:
    """The server's own writes never checkpoint the WAL (that syncs, in the event loop):
    a background checkpoint copies them into the database file, so the WAL stays small
    and a copy of the file alone (as a careless backup takes) holds the runs."""
    user_id, workflow_id = api.install(echo_workflow())
    execution_ids = run_all(api, user_id, workflow_id, 5)
    for execution_id in execution_ids:
        api.wait_for(workflow_id, execution_id)
    deadline = time.monotonic() + 10
    found: set[str] = set()
    while time.monotonic() < deadline and found != set(execution_ids):
        copy = tmp_path / "copy.db"
        shutil.copyfile(server.settings.data_dir / "solder.db", copy)
        with contextlib.closing(sqlite3.connect(copy)) as conn:
            found = {
                row[0] for row in conn.execute("SELECT id FROM executions WHERE log IS NOT NULL")
            }
        time.sleep(0.2)
    assert found == set(execution_ids)


@sqlite_only
def test_claiming_the_next_run_reads_the_pending_index_not_the_history(tmp_path: Path) -> None:
    """Claims must not walk every finished execution: a server with a long history (or a
    backlog) would claim slower and slower."""
    Database(f"sqlite:///{tmp_path / 'solder.db'}").migrate()
    sql, constants = queue._CLAIM.compiled(prepared._SQLITE_NAMED)
    with contextlib.closing(sqlite3.connect(tmp_path / "solder.db")) as conn:
        plan = [
            row[3]
            for row in conn.execute(
                "EXPLAIN QUERY PLAN " + sql, {**constants, "claimed_at": 0, "lease": "x"}
            )
        ]
    assert any("USING INDEX ix_executions_pending" in step for step in plan), plan
    assert not any("TEMP B-TREE" in step for step in plan), plan
