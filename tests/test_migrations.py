"""The schema the migrations build is exactly the schema the code declares, on the
database of this run (SQLite, or PostgreSQL with SOLDER_TEST_DATABASE=postgres)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, create_engine, inspect, text

from solder.store.database import Database, _configure_sqlite
from solder.store.schema import declared_on, metadata, owned_by_solder
from tests import databases


def empty_database(tmp_path: Path) -> Database:
    url = databases.database_url(tmp_path, empty=True) or f"sqlite:///{tmp_path / 'solder.db'}"
    return Database(url)


def differences(db: Database) -> tuple[list[object], set[str]]:
    engine = create_engine(db.sync_url)
    try:
        with engine.connect() as conn:
            opts = {
                "include_name": owned_by_solder,
                "include_object": declared_on(conn.dialect.name),
            }
            context = MigrationContext.configure(conn, opts=opts)
            diff = compare_metadata(context, metadata)
            tables = set(inspect(conn).get_table_names())
    finally:
        engine.dispose()
    return diff, tables


@contextlib.contextmanager
def engine_at(db: Database, revision: str) -> Iterator[Engine]:
    """A connection engine to `db`, migrated up to `revision` only."""
    from solder.store import migrate

    engine = create_engine(db.sync_url)
    if db.is_sqlite:
        _configure_sqlite(engine, "normal")
    try:
        migrate.upgrade(engine, revision)
        yield engine
    finally:
        engine.dispose()


def test_migrations_build_the_declared_schema(tmp_path: Path) -> None:
    db = empty_database(tmp_path)
    db.migrate()
    diff, tables = differences(db)
    assert diff == []
    assert set(metadata.tables) <= tables


def test_every_foreign_key_leads_an_index_of_its_table(tmp_path: Path) -> None:
    """Deleting a row deletes or checks the rows that refer to it (a tenant's data, an
    execution's steps): each of those lookups goes through an index, never a scan of the
    referring table for each row deleted (a purge batch of 500 executions took 423 ms
    on PostgreSQL and 2.4 s on SQLite with 20,000 steps running, when `steps` was keyed
    by tenant first: docs/decisions.md, "Lean executions")."""
    db = empty_database(tmp_path)
    db.migrate()
    engine = create_engine(db.sync_url)
    try:
        with engine.connect() as conn:
            schema = inspect(conn)
            unserved = []
            for table in sorted(metadata.tables):
                keys: list[list[str | None]] = [
                    list(schema.get_pk_constraint(table)["constrained_columns"])
                ]
                keys += [list(index["column_names"]) for index in schema.get_indexes(table)]
                keys += [list(u["column_names"]) for u in schema.get_unique_constraints(table)]
                for foreign in schema.get_foreign_keys(table):
                    columns = foreign["constrained_columns"]
                    if not any(key[: len(columns)] == columns for key in keys):
                        unserved.append((table, columns, foreign["referred_table"]))
    finally:
        engine.dispose()
    assert unserved == []


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


def test_integer_keys_keep_every_execution_its_steps_and_its_order(tmp_path: Path) -> None:
    """0007 rebuilds `executions` with numbers for its workflow and user: an execution
    recorded before keeps its id, its ids, its log and the steps of a running one, and
    the logs pages keep their order (ties in a millisecond included)."""
    from solder.store import migrate

    db = empty_database(tmp_path)
    with engine_at(db, "0006") as engine:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO tenants (id, name, created_at) VALUES ('t1', 'a', 1)"))
            for workflow in ("w1", "w2"):
                conn.execute(
                    text(
                        "INSERT INTO workflows (tenant_id, id, name, latest_version,"
                        " trigger_type, created_at, updated_at)"
                        " VALUES ('t1', :id, :id, 1, 'webhook', 1, 1)"
                    ),
                    {"id": workflow},
                )
            conn.execute(
                text(
                    "INSERT INTO users (tenant_id, id, username, created_at)"
                    " VALUES ('t1', 'u1', 'one', 1)"
                )
            )
            # e3 and e4 started in the same millisecond; u0 was deleted before 0007.
            for id_, workflow, user, started, status, log in (
                ("e1", "w1", "u1", 10, "succeeded", b"log1"),
                ("e2", "w2", "u1", 20, "failed", b"log2"),
                ("e4", "w1", "u1", 30, "succeeded", b"log4"),
                ("e3", "w1", "u1", 30, "succeeded", b"log3"),
                ("e5", "w1", "u0", 40, "succeeded", b"log5"),
                ("e6", "w1", "u1", 50, "running", None),
            ):
                conn.execute(
                    text(
                        "INSERT INTO executions (tenant_id, id, workflow_id, user_id,"
                        " workflow_version, status, trigger_id, trigger_data, started_at, log)"
                        " VALUES ('t1', :id, :w, :u, 1, :status, '', '', :started, :log)"
                    ),
                    {"id": id_, "w": workflow, "u": user, "status": status, "started": started}
                    | {"log": log},
                )
            conn.execute(
                text(
                    "INSERT INTO steps (tenant_id, execution_id, seq, connector_id, block_name,"
                    " started_at, stopped_at, data, inputs)"
                    " VALUES ('t1', 'e6', 1, 'c', 'b', 50, 51, '[]', '{}')"
                )
            )

        migrate.upgrade(engine)

        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT e.id, w.workflow_id, u.user_id, e.status, e.log FROM executions e"
                    " JOIN workflow_numbers w ON w.number = e.workflow_number"
                    " JOIN user_numbers u ON u.number = e.user_number"
                    " WHERE w.workflow_id = 'w1' ORDER BY e.workflow_position DESC"
                )
            ).all()
            steps = conn.execute(text("SELECT execution_id, seq FROM steps")).all()
    assert [tuple(row) for row in rows] == [
        ("e6", "w1", "u1", "running", None),
        ("e5", "w1", "u0", "succeeded", b"log5"),
        ("e4", "w1", "u1", "succeeded", b"log4"),  # its id sorts after e3's: as before
        ("e3", "w1", "u1", "succeeded", b"log3"),
        ("e1", "w1", "u1", "succeeded", b"log1"),
    ]
    assert [tuple(step) for step in steps] == [("e6", 1)]
    assert differences(db)[0] == []


def test_log_positions_number_each_listing_in_its_order_of_before(tmp_path: Path) -> None:
    """0008 gives every execution its place in its user's and its workflow's logs pages,
    in the order those pages had (start time, then seq), and each listing its last."""
    from solder.store import migrate

    db = empty_database(tmp_path)
    with engine_at(db, "0007") as engine:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO tenants (id, name, created_at) VALUES ('t1', 'a', 1)"))
            for table, column, ids in (
                ("workflow_numbers", "workflow_id", ("w1", "w2")),
                ("user_numbers", "user_id", ("u1", "u2")),
            ):
                for id_ in ids:
                    conn.execute(
                        text(f"INSERT INTO {table} (tenant_id, {column}) VALUES ('t1', :id)"),
                        {"id": id_},
                    )
            # Recorded out of time order; e3 and e4 started in the same millisecond.
            for id_, workflow, user, started in (
                ("e2", 1, 1, 20),
                ("e1", 1, 2, 10),
                ("e4", 1, 1, 30),
                ("e3", 1, 2, 30),
                ("e5", 2, 1, 5),
            ):
                conn.execute(
                    text(
                        "INSERT INTO executions (tenant_id, id, workflow_number, user_number,"
                        " workflow_version, status, trigger_id, trigger_data, started_at)"
                        " VALUES ('t1', :id, :w, :u, 1, 'succeeded', '', '', :started)"
                    ),
                    {"id": id_, "w": workflow, "u": user, "started": started},
                )

        migrate.upgrade(engine)

        with engine.connect() as conn:
            positions = conn.execute(
                text(
                    "SELECT id, workflow_position, user_position FROM executions"
                    " ORDER BY workflow_number, workflow_position"
                )
            ).all()
            listings = conn.execute(
                text(
                    "SELECT workflow_number, user_number, last_position, deleted, deleted_top"
                    " FROM log_listings ORDER BY workflow_number, user_number"
                )
            ).all()
    assert [tuple(row) for row in positions] == [
        ("e1", 1, 1),
        ("e2", 2, 1),
        ("e4", 3, 2),  # recorded before e3: its seq is lower
        ("e3", 4, 2),
        ("e5", 1, 1),
    ]
    assert [tuple(row) for row in listings] == [
        (1, 0, 4, 0, 0),
        (1, 1, 2, 0, 0),
        (1, 2, 2, 0, 0),
        (2, 0, 1, 0, 0),
        (2, 1, 1, 0, 0),
    ]
    assert differences(db)[0] == []


@contextlib.contextmanager
def at_0008(
    db: Database, executions: Sequence[tuple[str, str, int, str, bytes | None]]
) -> Iterator[Engine]:
    """`db` at 0008, with two tenants' workflow 1 and user 1, and `executions` as
    (tenant, id, started, status, log) recorded in that order (positions given)."""
    with engine_at(db, "0008") as engine:
        with engine.begin() as conn:
            for tenant in ("t1", "t2"):
                conn.execute(
                    text("INSERT INTO tenants (id, name, created_at) VALUES (:t, :t, 1)"),
                    {"t": tenant},
                )
                for table, column in (
                    ("workflow_numbers", "workflow_id"),
                    ("user_numbers", "user_id"),
                ):
                    conn.execute(
                        text(f"INSERT INTO {table} (tenant_id, {column}) VALUES (:t, 'x')"),
                        {"t": tenant},
                    )
            numbers, users = (
                {str(tenant): int(number) for tenant, number in conn.execute(text(sql)).all()}
                for sql in (
                    "SELECT tenant_id, number FROM workflow_numbers",
                    "SELECT tenant_id, number FROM user_numbers",
                )
            )
            placed: dict[str, int] = {}
            for tenant, id_, started, status, log in executions:
                placed[tenant] = position = placed.get(tenant, 0) + 1
                conn.execute(
                    text(
                        "INSERT INTO executions (tenant_id, id, workflow_number, user_number,"
                        " workflow_version, status, trigger_id, trigger_data, started_at, log,"
                        " user_position, workflow_position)"
                        " VALUES (:t, :id, :w, :u, 1, :status, '', '', :started, :log, :p, :p)"
                    ),
                    {"t": tenant, "id": id_, "w": numbers[tenant], "u": users[tenant]}
                    | {"status": status, "started": started, "log": log, "p": position},
                )
        yield engine


def test_lean_executions_keep_every_execution_its_steps_and_its_positions(
    tmp_path: Path,
) -> None:
    """0009 keys executions by id alone and drops their row sequence: every execution
    keeps its columns and positions, a running one its steps, and deleting an execution
    still deletes its steps."""
    from solder.store import migrate

    db = empty_database(tmp_path)
    recorded = [
        ("t1", "e1", 10, "succeeded", b"log1"),
        ("t2", "f1", 15, "failed", b"logf"),
        ("t1", "e2", 20, "running", None),
        ("t1", "e3", 20, "succeeded", b"log3"),
    ]
    with at_0008(db, recorded) as engine:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO steps (tenant_id, execution_id, seq, connector_id, block_name,"
                    " started_at, stopped_at, data, inputs) VALUES"
                    " ('t1', 'e2', 1, 'c', 'b', 20, 21, '[]', '{}')"
                )
            )
        migrate.upgrade(engine)
        with engine.begin() as conn:
            rows = conn.execute(
                text(
                    "SELECT tenant_id, id, started_at, status, log, workflow_position"
                    " FROM executions ORDER BY tenant_id, workflow_position"
                )
            ).all()
            steps_before = conn.execute(text("SELECT execution_id, seq FROM steps")).all()
            conn.execute(text("DELETE FROM executions WHERE id = 'e2'"))
            steps_after = conn.execute(text("SELECT count(*) FROM steps")).scalar_one()
    assert [tuple(row) for row in rows] == [
        ("t1", "e1", 10, "succeeded", b"log1", 1),
        ("t1", "e2", 20, "running", None, 2),
        ("t1", "e3", 20, "succeeded", b"log3", 3),
        ("t2", "f1", 15, "failed", b"logf", 1),
    ]
    assert [tuple(step) for step in steps_before] == [("e2", 1)]
    assert steps_after == 0, "the steps went with their execution"
    assert differences(db)[0] == []


def test_lean_executions_refuse_an_id_two_tenants_share_and_say_so(tmp_path: Path) -> None:
    from solder.store import migrate

    db = empty_database(tmp_path)
    shared = [("t1", "same", 10, "succeeded", b"a"), ("t2", "same", 11, "succeeded", b"b")]
    with at_0008(db, shared) as engine:
        with pytest.raises(RuntimeError, match="share the ids same: delete or rename them"):
            migrate.upgrade(engine)
        with engine.connect() as conn:
            kept = conn.execute(text("SELECT count(*) FROM executions")).scalar_one()
    assert kept == 2, "nothing was changed"


@pytest.mark.skipif(not databases.on_postgres(), reason="ANALYZE's sample is PostgreSQL's")
def test_analyze_samples_few_executions(tmp_path: Path) -> None:
    """Every column of `executions`, a later one too, keeps a statistics target of 10
    (migration 0015), so an ANALYZE of the table (autovacuum's, every few seconds under
    load) samples 3,000 rows, not the default's 30,000."""
    db = empty_database(tmp_path)
    db.migrate()
    engine = create_engine(db.sync_url)
    try:
        with engine.connect() as conn:
            targets: dict[str, int] = dict(
                conn.execute(
                    text(
                        "SELECT attname, attstattarget FROM pg_attribute"
                        " WHERE attrelid = 'executions'::regclass AND attnum > 0"
                        " AND NOT attisdropped"
                    )
                ).all()
            )
            assert set(targets) == {
                column["name"] for column in inspect(conn).get_columns("executions")
            }
            assert set(targets.values()) == {10}, targets
            conn.execute(
                text(
                    "INSERT INTO executions (tenant_id, id, workflow_number, user_number,"
                    " workflow_version, status, trigger_id, trigger_data, started_at,"
                    " user_position, workflow_position)"
                    " SELECT 't', 'e' || n, 1, 1, 1, 'succeeded', '', '{}', n, n, n"
                    " FROM generate_series(1, 20000) AS n"
                )
            )
            conn.commit()
            notices: list[str] = []
            raw = conn.connection.driver_connection
            assert raw is not None
            raw.add_notice_handler(lambda notice: notices.append(str(notice.message_primary)))
            conn.execute(text("ANALYZE VERBOSE executions"))
            conn.commit()
    finally:
        engine.dispose()
    sampled = [line for line in notices if "rows in sample" in line]
    assert len(sampled) == 1, notices
    assert "3000 rows in sample" in sampled[0]
