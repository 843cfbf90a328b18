"""Prepared statements, and SQLite transactions that never leave the event loop's thread.

The hot paths (an API key, a page of logs, a block's step) cost far more in machinery than in
SQL: SQLAlchemy spends some 30 µs per statement building it and finding its compiled
form, and a hop to aiosqlite's thread and back costs 0.2 to 0.4 ms on a loaded machine,
several times per statement, while the statements themselves take about 10 µs each on
SQLite (bench/RESULTS.md). So those paths build each statement once (`Prepared`) and
run its SQL on the driver's cursor; on SQLite, on a plain `sqlite3` connection in the
calling thread (`InlineReader`, `InlineWriter`); on PostgreSQL reads, on psycopg's own
pool (`PostgresReader`).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy.exc
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine.interfaces import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import Delete, Insert, Select, TextClause, Update

Row = dict[str, Any]

INTEGRITY_ERRORS = (sqlalchemy.exc.IntegrityError, sqlite3.IntegrityError, psycopg.IntegrityError)
"""A unique key or a constraint refused a write, whichever connection ran it."""

# sqlite3 takes `:name` parameters from a dict, as psycopg takes `%(name)s`.
_SQLITE_NAMED = sqlite.pysqlite.dialect(paramstyle="named")
_POSTGRES = postgresql.psycopg.dialect()  # type: ignore[no-untyped-call]


Statement = Select[Any] | Insert | Update | Delete | TextClause


class Prepared:
    """A statement built once, with named bind parameters, compiled once per database;
    `sqlite`, if given, is the same statement as SQLite is better asked it."""

    def __init__(self, statement: Statement, *, sqlite: Statement | None = None) -> None:
        self.statement = statement
        self._statements = {"sqlite": sqlite} if sqlite is not None else {}
        self._compiled: dict[str, tuple[str, dict[str, Any]]] = {}

    def compiled(self, dialect: Dialect) -> tuple[str, dict[str, Any]]:
        """The SQL for `dialect`, and the values of the parameters the statement holds
        itself (its literals, such as `status = 'running'`)."""
        compiled = self._compiled.get(dialect.name)
        if compiled is None:
            sql = self._statements.get(dialect.name, self.statement).compile(dialect=dialect)
            if any(bind.expanding for bind in sql.binds.values()):
                raise ValueError("a prepared statement cannot hold IN (list): spell it with OR")
            constants = {
                name: bind.effective_value for name, bind in sql.binds.items() if not bind.required
            }
            compiled = self._compiled[dialect.name] = (str(sql), constants)
        return compiled

    def run_on(self, dialect: Dialect, params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        sql, constants = self.compiled(dialect)
        return sql, {**constants, **params} if constants else params


class DriverConnection:
    """A transaction on a driver's own connection, for prepared statements only."""

    dialect: Dialect

    async def rows(self, sql: str, params: dict[str, Any]) -> list[Row]:
        raise NotImplementedError

    async def count(self, sql: str, params: dict[str, Any]) -> int:
        """Run a statement that returns no rows; how many rows it changed."""
        raise NotImplementedError


class InlineConnection(DriverConnection):
    """A read transaction on a `sqlite3` connection, in the calling thread.

    Awaiting `rows` never suspends, so a transaction runs to its end without letting
    another task in; each statement blocks the event loop while it runs, which is why
    only bounded lookups through an index use it.
    """

    dialect = _SQLITE_NAMED

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    async def rows(self, sql: str, params: dict[str, Any]) -> list[Row]:
        cursor = self._conn.execute(sql, params)
        names = [column[0] for column in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    async def count(self, sql: str, params: dict[str, Any]) -> int:
        return self._conn.execute(sql, params).rowcount


class PostgresTransaction(DriverConnection):
    """Statements on a connection of psycopg's own pool: a write transaction of
    `PostgresWriter`'s, or (as `PostgresConnection`) a read of `PostgresReader`'s.

    Unlike a read, a statement that fails in a write is not run again: the transaction it
    was part of is gone with the connection, and the caller's `Unavailable` says so.
    """

    dialect = _POSTGRES

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.conn = conn

    async def rows(self, sql: str, params: dict[str, Any]) -> list[Row]:
        async with self.conn.cursor(row_factory=dict_row) as cursor:
            await cursor.execute(sql, params)
            # No result set (a write without RETURNING): no rows. Not `description`,
            # which builds a `Column` for each column each time it is read: a logs page
            # took 1.12 times the server's CPU with it (bench/RESULTS.md, scenario 1).
            return [] if cursor.rownumber is None else await cursor.fetchall()

    async def count(self, sql: str, params: dict[str, Any]) -> int:
        async with self.conn.cursor() as cursor:
            await cursor.execute(sql, params)
            return cursor.rowcount


class PostgresConnection(PostgresTransaction):
    """Read-only statements in autocommit on a connection of `PostgresReader`'s pool."""

    def __init__(self, pool: AsyncConnectionPool, conn: psycopg.AsyncConnection[Any]) -> None:
        super().__init__(conn)
        self._pool = pool

    async def rows(self, sql: str, params: dict[str, Any]) -> list[Row]:
        try:
            return await super().rows(sql, params)
        except psycopg.OperationalError:
            # Most likely the server dropped this connection (it restarted, or failed
            # over), and the pool's others with it: the pool checks those it keeps. The
            # statement only reads, in its own snapshot: it runs again as it is on a
            # connection that works, and if the server is really gone, that fails too.
            await self._pool.putconn(self.conn)  # the pool discards a broken connection
            await self._pool.check()
            self.conn = await self._pool.getconn()
        return await super().rows(sql, params)


Reader = AsyncConnection | DriverConnection
"""What a prepared statement runs on: any transaction's connection, or a driver's."""


def on_postgres(conn: Reader) -> bool:
    """Whether `conn` is PostgreSQL's (else SQLite's), whichever kind of connection it is."""
    return conn.dialect.name == "postgresql"


async def fetch(conn: Reader, statement: Prepared, **params: Any) -> list[Row]:
    """The rows of a prepared statement, as dicts of column name to driver value."""
    if isinstance(conn, DriverConnection):
        return await conn.rows(*statement.run_on(conn.dialect, params))
    result = await conn.exec_driver_sql(*_on(conn, statement, params))
    return [dict(row) for row in result.mappings()]


async def fetch_one(conn: Reader, statement: Prepared, **params: Any) -> Row | None:
    rows = await fetch(conn, statement, **params)
    return rows[0] if rows else None


async def execute(conn: Reader, statement: Prepared, **params: Any) -> int:
    """Run a prepared statement that returns no rows; how many rows it changed."""
    if isinstance(conn, DriverConnection):
        return await conn.count(*statement.run_on(conn.dialect, params))
    return (await conn.exec_driver_sql(*_on(conn, statement, params))).rowcount


def _on(
    conn: AsyncConnection, statement: Prepared, params: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    """The statement's SQL and parameters as the driver under `conn` takes them: SQLAlchemy
    would treat parameters named after columns as values to set, and compile again."""
    return statement.run_on(_SQLITE_NAMED if conn.dialect.name == "sqlite" else _POSTGRES, params)


def sqlite_pragmas(conn: sqlite3.Connection, *, synchronous: str, busy_timeout_ms: int) -> None:
    """Set what every Solder connection that writes to a SQLite file must have."""
    # Lets retention give freed pages back to the file system (PRAGMA incremental_vacuum).
    # It takes effect only on a new file, so before journal_mode, which writes the
    # header; an older file switches by `solder vacuum`.
    conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
    conn.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
    conn.execute("PRAGMA foreign_keys=ON")
    # Deleted logs are overwritten with zeros: an erased log is really gone.
    conn.execute("PRAGMA secure_delete=ON")


class InlineReader:
    """Read-only `sqlite3` connections for `InlineConnection`s, kept for reuse.

    Used on the event loop's thread only, so it never waits for a connection (nothing
    could give one back meanwhile): it opens another when every kept one is in use.
    """

    def __init__(self, path: Path, *, keep: int) -> None:
        self._path = path
        self._keep = keep
        self._idle: list[sqlite3.Connection] = []

    @contextmanager
    def transaction(self) -> Iterator[InlineConnection]:
        conn = self._idle.pop() if self._idle else self._open()
        try:
            conn.execute("BEGIN")
        except sqlite3.Error:
            conn.close()
            raise
        try:
            yield InlineConnection(conn)
        finally:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                conn.close()  # in an unknown state: not reused
            else:
                if len(self._idle) < self._keep:
                    self._idle.append(conn)
                else:
                    conn.close()

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout=10000")
        conn.execute("PRAGMA query_only=ON")  # a read path that tried to write is a bug
        return conn

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()


class Busy(Exception):
    """Another process holds SQLite's write lock: waiting for it here would block the loop."""


class InlineWriter:
    """SQLite write transactions on one `sqlite3` connection, in the event loop's thread.

    A step's write (check the lease, insert the step, commit) costs some 0.1 ms here,
    and about 2 ms through aiosqlite's thread on a busy server (bench/RESULTS.md). The
    writers' statements never suspend, so one connection serves every writer of the
    process (`Database.write_inline` shares each transaction among the writers of one
    turn of the event loop). It never waits either: when
    another process holds the write lock, `transaction` raises `Busy` and the caller
    writes through a connection that may wait. Committing never checkpoints the WAL
    here (that writes the database file and syncs it): `checkpoint` does, in a thread.
    """

    def __init__(self, path: Path, *, synchronous: str) -> None:
        self._path = path
        self._synchronous = synchronous
        self._conn: sqlite3.Connection | None = None

    def begin(self) -> sqlite3.Connection:
        """The connection, in a write transaction begun now; Busy if another process
        holds the write lock. The caller commits or rolls it back."""
        conn = self._conn or self._open()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc).lower() or "busy" in str(exc).lower():
                raise Busy from exc
            raise
        return conn

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        sqlite_pragmas(conn, synchronous=self._synchronous, busy_timeout_ms=0)
        conn.execute("PRAGMA wal_autocheckpoint=0")
        # When the WAL starts over, its file is cut back to this size.
        conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
        self._conn = conn
        return conn

    def checkpoint(self, mode: str = "PASSIVE") -> None:
        """Copy the WAL's committed pages into the database file (in a thread: it syncs).

        `RESTART` also waits for readers of the old pages, so that the next write starts
        the WAL over: 0.1 s at most, since the caller holds the process's writers
        meanwhile (a reader still there then is waited for at the next checkpoint)."""
        with sqlite3.connect(self._path, isolation_level=None) as conn:
            conn.execute("PRAGMA busy_timeout=100")
            conn.execute(f"PRAGMA wal_checkpoint({mode})")
        conn.close()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


WAL_SIZE_LIMIT = 64 * 2**20

APPLICATION_NAME = "solder-reads"


# psycopg's pool retries a lost connection with a delay that doubles each time (1, 2, 4...
# s) for up to five minutes: a server back after an outage of a minute was found up to a
# minute later, every request refused meanwhile (each after the checkout's whole
# timeout). Solder's pools give up retrying by themselves after `_RECONNECT_SECONDS`
# and connect again when a request needs a connection; while the server is known to be
# unreachable, a checkout waits `_DOWN_CHECKOUT_SECONDS` at most (enough to connect to a
# server that is back), so a request is refused (503) at once rather than after the
# timeout.
_RECONNECT_SECONDS = 2.0
_DOWN_CHECKOUT_SECONDS = 0.5


class _Pool:
    """psycopg's own pool of autocommit connections, opened at its first use."""

    def __init__(
        self,
        conninfo: str,
        *,
        size: int,
        connect_timeout: int,
        name: str,
        configure: Callable[[psycopg.AsyncConnection[Any]], Awaitable[None]] | None = None,
    ) -> None:
        self._configure = configure
        self._pool = AsyncConnectionPool(
            conninfo,
            min_size=1,
            max_size=size,
            open=False,
            timeout=connect_timeout,  # then Unavailable (503), as SQLAlchemy's pool does
            kwargs={
                "connect_timeout": connect_timeout,
                "autocommit": True,
                "application_name": name,  # as pg_stat_activity shows them
            },
            configure=self._connected,
            reconnect_timeout=_RECONNECT_SECONDS,
            reconnect_failed=self._unreachable,
            name=name,
        )
        self._opening = asyncio.Lock()
        self._open = False
        self.unreachable = False  # the pool gave up connecting, and has not connected since

    async def _opened(self) -> AsyncConnectionPool:
        if not self._open:
            async with self._opening:
                if not self._open:
                    await self._pool.open(wait=False)
                    self._open = True
        return self._pool

    @property
    def checkout_timeout(self) -> float:
        return _DOWN_CHECKOUT_SECONDS if self.unreachable else self._pool.timeout

    async def _connected(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.unreachable = False
        if self._configure is not None:
            await self._configure(conn)

    def _unreachable(self, pool: AsyncConnectionPool) -> None:
        self.unreachable = True

    async def close(self) -> None:
        if self._open:
            await self._pool.close()
            self._open = False


class PostgresReader(_Pool):
    """psycopg's own pool of read-only connections in autocommit, for the hot reads.

    Through SQLAlchemy's async engine each statement costs a greenlet switch and its
    machinery on top of the round trip, and checking a connection out costs a ping;
    here a statement is one round trip. Each statement sees its own snapshot, so what
    must be consistent is read by one statement (a page of logs is one statement, so one
    round trip instead of three: BEGIN, the statement, COMMIT). A statement whose
    connection the server dropped runs again on a new one; a server that cannot be
    reached is `Unavailable`.
    """

    def __init__(self, conninfo: str, *, size: int, connect_timeout: int) -> None:
        super().__init__(
            conninfo,
            size=size,
            connect_timeout=connect_timeout,
            name=APPLICATION_NAME,
            configure=_read_only,
        )

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[PostgresConnection]:
        pool = await self._opened()
        conn = PostgresConnection(pool, await pool.getconn(self.checkout_timeout))
        try:
            yield conn
        finally:
            await pool.putconn(conn.conn)


class PostgresWriter(_Pool):
    """psycopg's own pool of connections for the hot writes (accepting a run, a step, an
    execution's end), each a transaction of a few prepared statements.

    SQLAlchemy's async engine costs a ping at each checkout, a greenlet switch per
    statement and its own machinery: several times the round trips themselves
    (bench/RESULTS.md). A connection that fails is discarded by the pool; the caller
    sees `psycopg.OperationalError` and nothing of its transaction was committed.
    """

    def __init__(self, conninfo: str, *, size: int, connect_timeout: int) -> None:
        super().__init__(conninfo, size=size, connect_timeout=connect_timeout, name=WRITER_NAME)

    @asynccontextmanager
    async def transaction(self, *, single: bool = False) -> AsyncIterator[PostgresTransaction]:
        """A transaction; with `single`, for one statement, which commits by itself."""
        pool = await self._opened()
        async with pool.connection(self.checkout_timeout) as conn:
            if single:  # the statement is its own transaction: no BEGIN and COMMIT trips
                yield PostgresTransaction(conn)
                return
            async with conn.transaction():
                yield PostgresTransaction(conn)


WRITER_NAME = "solder-writes"


async def _read_only(conn: psycopg.AsyncConnection[Any]) -> None:
    await conn.set_read_only(True)  # a hot read path that tried to write is a bug
