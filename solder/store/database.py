"""The database: one async engine, read and write transactions, and migrations."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import psycopg_pool
from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import QueuePool

from solder.errors import Unavailable
from solder.store.lock import FileLock
from solder.store.prepared import (
    Busy,
    InlineConnection,
    InlineReader,
    InlineWriter,
    PostgresReader,
    PostgresWriter,
    Reader,
    sqlite_pragmas,
)

log = logging.getLogger("solder.database")


@dataclass(eq=False)
class _Group:
    """A write transaction that the SQLite writers of one event loop turn share."""

    conn: sqlite3.Connection
    committed: asyncio.Future[None]
    active: int = 0
    """Writers inside it now: it commits once there are none."""
    broken: bool = False
    """SQLite ended the transaction under a writer: it fails, and nobody joins it."""
    due: bool = False
    """The last writer out commits it: its turn came while a writer was inside (one that
    suspended), or the writers commit one by one."""


def _urls(database_url: str) -> tuple[URL, URL]:
    """The async and sync SQLAlchemy URLs for a user-facing database URL."""
    url = make_url(database_url)
    backend = url.get_backend_name()
    if backend == "sqlite":
        return url.set(drivername="sqlite+aiosqlite"), url.set(drivername="sqlite")
    if backend in ("postgresql", "postgres"):
        pg = url.set(drivername="postgresql+psycopg")
        return pg, pg
    raise ValueError(
        f"unsupported database URL {database_url!r}: use sqlite:///path.db or postgresql://..."
    )


def _sqlite_file(url: URL) -> Path | None:
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database)


def _configure_sqlite(sync_engine: Any, synchronous: str) -> None:
    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below issue BEGIN itself (pysqlite's own
        # transaction handling would defer it and break BEGIN IMMEDIATE).
        dbapi_connection.isolation_level = None
        sqlite_pragmas(dbapi_connection, synchronous=synchronous, busy_timeout_ms=10_000)

    @event.listens_for(sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Writers take the write lock up front, so two writers never deadlock on a
        # lock upgrade; busy_timeout then makes other processes (the CLI) wait their turn.
        if conn.get_execution_options().get("solder_write"):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")


class Database:
    """The async engine and the transactions every query runs in."""

    def __init__(
        self,
        database_url: str,
        *,
        sqlite_synchronous: str = "normal",
        pool_size: int = 10,
        shared: bool = False,
    ) -> None:
        """`shared`: a SQLite file that other serving processes write to as well
        (`solder serve --processes`)."""
        async_url, self.sync_url = _urls(database_url)
        self.is_sqlite = async_url.get_backend_name() == "sqlite"
        sqlite_file = self.sqlite_file = _sqlite_file(async_url)
        if self.is_sqlite and sqlite_file is None:
            raise ValueError(
                "an in-memory SQLite database cannot be shared by Solder's connections, its "
                "threads and its child processes: give a file, e.g. sqlite:///data/solder.db"
            )
        if sqlite_file is not None:
            # Logs hold end users' data: a new data directory is readable by its owner only.
            sqlite_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.libpq_url = "" if self.is_sqlite else _libpq(async_url)
        """The PostgreSQL URL as libpq takes it (procrastinate's own pool connects with it)."""
        self.engine: AsyncEngine = create_async_engine(
            async_url,
            # A fixed number of connections, kept open: opening one per burst costs
            # PostgreSQL a backend start each time (bench/RESULTS.md).
            pool_size=pool_size,
            max_overflow=0,
            # The connection given back last is taken first: the background sweeps, one
            # at a time, keep reusing one or two connections instead of going round all
            # of them. On SQLite each is a thread of aiosqlite's with its own page cache
            # and malloc arena, which a sweep that reads many pages (recompression)
            # filled one after the other, for good (bench/RESULTS.md, scenario 6).
            pool_use_lifo=True,
            pool_pre_ping=not self.is_sqlite,
            # An unreachable server is an error in seconds (503), not a hang.
            connect_args={} if self.is_sqlite else {"connect_timeout": CONNECT_TIMEOUT},
        )
        if self.is_sqlite:
            _configure_sqlite(self.engine.sync_engine, sqlite_synchronous)
        self._inline = None if sqlite_file is None else InlineReader(sqlite_file, keep=pool_size)
        # A commit that syncs (synchronous=FULL) would block the event loop: those write
        # through aiosqlite's thread.
        self._inline_writes = (
            None
            if sqlite_file is None or sqlite_synchronous.lower() in ("full", "extra")
            else InlineWriter(sqlite_file, synchronous=sqlite_synchronous)
        )
        self._checkpoints: asyncio.Task[None] | None = None
        self._group: _Group | None = None
        self._postgres_reads = (
            None
            if self.is_sqlite
            else PostgresReader(self.libpq_url, size=pool_size, connect_timeout=CONNECT_TIMEOUT)
        )
        self._postgres_writes = (
            None
            if self.is_sqlite
            else PostgresWriter(self.libpq_url, size=pool_size, connect_timeout=CONNECT_TIMEOUT)
        )
        # SQLite has one writer at a time; queueing writers of this process here is
        # cheaper than letting them spin on busy_timeout.
        self._write_lock = asyncio.Lock() if self.is_sqlite else None
        # And the processes serving one file (`solder serve --processes`) queue on a lock
        # file: SQLite's own lock is not a queue but a retry every few milliseconds, which
        # a process writing without pause keeps taking first. Two processes on it ended
        # 78 runs a second where one alone ended 513; queued here, 654 (bench/RESULTS.md).
        # A process alone does without it.
        self._file_lock = (
            FileLock(sqlite_file.with_name(sqlite_file.name + ".write-lock"))
            if sqlite_file is not None and shared
            else None
        )

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A read-only transaction that sees one snapshot of the database.

        SQLite's read transactions are snapshots already; PostgreSQL's default (read
        committed) would let a page of logs see an execution's row from before it ended
        and its steps from after (by then deleted).
        """
        async with self._connect() as conn:
            if not self.is_sqlite:
                conn = await conn.execution_options(isolation_level="REPEATABLE READ")
            async with conn.begin():
                yield conn

    @asynccontextmanager
    async def read_inline(self) -> AsyncIterator[Reader]:
        """A read transaction for prepared statements that touch a bounded number of rows
        through an index (an API key, a page of logs), on the driver's own connection.

        On SQLite it runs in this thread and blocks the event loop while a statement
        runs, so it is not for scans (counts, analytics).
        """
        if self._postgres_reads is not None:
            with _unavailable_if_unreachable():
                async with self._postgres_reads.transaction() as conn:
                    yield conn
            return
        assert self._inline is not None  # SQLite: a file (the constructor checks)
        try:
            with self._inline.transaction() as conn:
                yield conn
        except sqlite3.OperationalError as exc:
            if any(s in str(exc).lower() for s in _TRANSIENT):
                raise Unavailable("the database is unavailable; retry shortly") from exc
            raise

    @asynccontextmanager
    async def _writing(self) -> AsyncIterator[None]:
        """SQLite: this process's turn to write, and then its turn among the processes."""
        assert self._write_lock is not None
        async with self._write_lock:
            if self._file_lock is None:
                yield
                return
            await self._file_lock.acquire()
            try:
                yield
            finally:
                self._file_lock.release()

    @asynccontextmanager
    async def write_inline(self, *, single: bool = False) -> AsyncIterator[Reader]:
        """A write transaction for prepared statements that touch a few rows through an
        index (a step, an execution's end): on SQLite, run in this thread.

        It blocks the event loop while a statement runs. When another process holds
        SQLite's write lock it is `write()`, which waits in a thread. On PostgreSQL it is
        a transaction on psycopg's own pool (`PostgresWriter`). With `single`, the caller
        runs one statement only, which is then its own transaction (one round trip).
        """
        if self._postgres_writes is not None:
            with _unavailable_if_unreachable():
                async with self._postgres_writes.transaction(single=single) as conn:
                    yield conn
            return
        writer = self._inline_writes
        if writer is not None and self._write_lock is not None:
            if self._checkpoints is None:
                self._checkpoints = asyncio.create_task(
                    self._checkpoint_forever(writer), name="solder-checkpoints"
                )
            group = await self._group_to_join(writer)
            if group is not None:
                joined = group.conn
                group.active += 1
                try:
                    try:
                        joined.execute("SAVEPOINT writer")
                    except sqlite3.Error:
                        group.broken = True
                        raise
                    try:
                        yield InlineConnection(joined)
                    except BaseException:
                        try:
                            joined.execute("ROLLBACK TO writer")
                            joined.execute("RELEASE writer")
                        except sqlite3.Error:  # SQLite ended the transaction (a full disk)
                            group.broken = True
                        raise
                    try:
                        joined.execute("RELEASE writer")
                    except sqlite3.Error:
                        group.broken = True
                        raise
                finally:
                    group.active -= 1
                    if group.due and not group.active:
                        self._commit(group)
                await asyncio.shield(group.committed)
                return
        async with self.write() as fallback:
            yield fallback

    async def _group_to_join(self, writer: InlineWriter) -> _Group | None:
        """The open group commit to write in, begun if there is none; None when another
        process holds SQLite's write lock (the caller then writes through `write()`).

        A group is one write transaction, committed at the event loop's next turn: the
        writers that run meanwhile (each in a savepoint of its own) share its commit. Of
        `solder serve --processes`, each writer commits its own at once.
        """
        assert self._write_lock is not None
        while True:
            group = self._group
            if group is None:
                break
            if not group.broken and group.active == 0:
                return group
            # A writer suspended inside it, or it failed: the next group, not this one.
            await asyncio.wait([group.committed])
        await self._write_lock.acquire()  # held by the group until it commits
        shared = self._file_lock
        try:
            if shared is not None:
                await shared.acquire()
            try:
                conn = writer.begin()
            except BaseException:
                if shared is not None:
                    shared.release()
                raise
        except Busy:
            self._write_lock.release()
            return None
        except BaseException:
            self._write_lock.release()
            raise
        group = _Group(conn, asyncio.get_running_loop().create_future())
        self._group = group
        if shared is None:
            asyncio.get_running_loop().call_soon(self._commit, group)
        else:
            # Other processes wait for the file meanwhile: each writer commits alone, at
            # once (a shared commit held it through the loop's turn: 0.74 and 0.80 of the runs).
            group.due = True
        return group

    def _commit(self, group: _Group) -> None:
        """Commit `group` once no writer is inside it; tell its writers how it went."""
        if group.active:
            group.due = True  # the last writer out commits it
            return
        self._group = None
        conn = group.conn
        try:
            if group.broken or not conn.in_transaction:
                raise Unavailable("the database ended a write transaction; retry shortly")
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            failed = (
                Unavailable("the database is unavailable; retry shortly")
                if isinstance(exc, sqlite3.Error)
                else exc
            )
            group.committed.set_exception(failed)
            group.committed.exception()  # retrieved: its writers may all be gone
        else:
            group.committed.set_result(None)
        finally:
            if self._file_lock is not None:
                self._file_lock.release()
            assert self._write_lock is not None
            self._write_lock.release()

    async def _checkpoint_forever(self, writer: InlineWriter) -> None:
        """Checkpoint the WAL every second, and let it start over.

        A checkpoint that runs beside the writers never catches up with them: it copies
        the pages committed when it began while new ones are appended, and the WAL only
        starts over when a write begins with every page copied. Under a steady load it
        grew without end (5.9 GB for a 63 MB database in 5 minutes, and every read
        slowed with it: bench/RESULTS.md, scenario 6). So the bulk is copied beside the
        writers, then what they appended meanwhile while this process's writers wait.
        """
        assert self._write_lock is not None
        while True:
            await asyncio.sleep(_CHECKPOINT_SECONDS)
            try:
                await asyncio.to_thread(writer.checkpoint)
                async with self._writing():
                    await asyncio.to_thread(writer.checkpoint, "RESTART")
            except sqlite3.Error as exc:
                log.warning("WAL checkpoint failed (it is retried): %s", exc)

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction, committed when the block exits without error."""
        if self._write_lock is None:
            async with self._connect() as conn, conn.begin():
                yield conn
            return
        async with self._writing(), self._connect() as conn:
            conn = await conn.execution_options(solder_write=True)
            async with conn.begin():
                yield conn

    @asynccontextmanager
    async def try_lock(self, key: int) -> AsyncIterator[bool]:
        """Whether this process got the lock `key`, held until the block exits: on
        PostgreSQL a session advisory lock, on SQLite a lock file beside the database
        (always got on a database in memory, which one process has).

        The lock is held on a connection of its own, outside the pools: held on a pooled
        connection, it would leave the work done under it one connection short (with a
        pool of one, waiting for itself until the pool timed out). Closing the
        connection releases the lock, whatever happened in the block.
        """
        if self.is_sqlite:
            if self.sqlite_file is None:
                yield True
                return
            lock = FileLock(self.sqlite_file.with_name(f"{self.sqlite_file.name}.lock-{key}"))
            try:
                yield lock.try_acquire()
            finally:
                lock.close()
            return
        with _unavailable_if_unreachable():
            conn = await psycopg.AsyncConnection.connect(
                self.libpq_url, autocommit=True, connect_timeout=CONNECT_TIMEOUT
            )
        async with conn:
            with _unavailable_if_unreachable():
                cursor = await conn.execute("SELECT pg_try_advisory_lock(%s)", (key,))
                row = await cursor.fetchone()
            yield bool(row and row[0])

    @asynccontextmanager
    async def _connect(self) -> AsyncIterator[AsyncConnection]:
        try:
            async with self.engine.connect() as conn:
                yield conn
        except PoolTimeout as exc:
            raise Unavailable("every database connection is busy; retry shortly") from exc
        except DBAPIError as exc:
            if exc.connection_invalidated or _is_unreachable(exc):
                raise Unavailable("the database is unavailable; retry shortly") from exc
            raise

    async def dispose(self) -> None:
        """Close every connection. Those of the engine still in use (by a task the stop
        did not wait for) are waited for, `_DISPOSE_WAIT_SECONDS` at most: one given back
        after the engine's pool is disposed goes into the old pool, which nobody closes
        (a PostgreSQL session held until the garbage collector finds it, and psycopg's
        ResourceWarning then). psycopg's own pools close what is given back to them once
        closed."""
        pool = self.engine.pool
        if isinstance(pool, QueuePool) and pool.checkedout():
            returned = asyncio.Event()
            event.listen(pool, "checkin", lambda _connection, _record: returned.set())
            try:
                async with asyncio.timeout(_DISPOSE_WAIT_SECONDS):
                    while pool.checkedout():
                        returned.clear()
                        await returned.wait()
            except TimeoutError:
                log.warning(
                    "closing the database with %d connections still in use",
                    pool.checkedout(),
                )
        await self.engine.dispose()
        if self._checkpoints is not None:
            self._checkpoints.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checkpoints
            self._checkpoints = None
        if self._inline_writes is not None:
            self._inline_writes.close()
        if self._file_lock is not None:
            self._file_lock.close()
        if self._inline is not None:
            self._inline.close()
        if self._postgres_reads is not None:
            await self._postgres_reads.close()
        if self._postgres_writes is not None:
            await self._postgres_writes.close()

    def migrate(self) -> None:
        """Bring the schema up to date (Alembic `upgrade head`)."""
        from solder.store.migrate import upgrade

        engine = create_engine(self.sync_url)
        if self.is_sqlite:
            _configure_sqlite(engine, "normal")
        try:
            # Processes starting together on PostgreSQL migrate one after the other.
            upgrade(engine, lock=None if self.is_sqlite else _MIGRATION_LOCK)
        finally:
            engine.dispose()


# Seconds to connect to PostgreSQL, and to wait for a pooled connection (the workers'
# queue pool too: `workers._queue_pool`); then `Unavailable` (503).
CONNECT_TIMEOUT = 5
# Inline writes never checkpoint the WAL themselves (database.write_inline).
_CHECKPOINT_SECONDS = 1.0
# `Database.dispose`: how long it waits for the connections still in use.
_DISPOSE_WAIT_SECONDS = 5.0


# pg_advisory_xact_lock takes a bigint: "solder" in ASCII.
_MIGRATION_LOCK = 0x736F6C646572


def _libpq(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


_TRANSIENT = (
    "connection refused",
    "could not connect",
    "server closed",
    "database is locked",  # another process held SQLite's write lock past busy_timeout
)


@contextlib.contextmanager
def _unavailable_if_unreachable() -> Iterator[None]:
    """psycopg's pool timing out, or its server gone: `Unavailable` (503)."""
    try:
        yield
    except psycopg_pool.PoolTimeout as exc:
        raise Unavailable("every database connection is busy; retry shortly") from exc
    except psycopg.OperationalError as exc:
        raise Unavailable("the database is unavailable; retry shortly") from exc


def _is_unreachable(exc: DBAPIError) -> bool:
    # psycopg's OperationalError: the server is gone, shutting down, starting up, or
    # cannot be reached (SQLSTATE classes 08 and 57P).
    if isinstance(exc.orig, psycopg.OperationalError):
        return True
    text = str(exc.orig).lower()
    return any(s in text for s in _TRANSIENT)
