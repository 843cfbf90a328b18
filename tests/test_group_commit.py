"""SQLite's writers of one event loop turn share one commit (`Database.write_inline`).

Each writer's statements run in a savepoint of the shared transaction, and its block
returns only once that transaction is committed: what it wrote is durable then, and a
writer that fails takes back its own statements alone.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from solder.errors import Unavailable
from solder.store.database import Database
from solder.store.prepared import DriverConnection, Reader


async def execute(conn: Reader, sql: str, params: dict[str, Any]) -> None:
    assert isinstance(conn, DriverConnection), "SQLite's writers write on its own connection"
    await conn.count(sql, params)


# A process alone, and one of `solder serve --processes` (whose writers commit one by one).
both_modes = pytest.mark.parametrize("shared", [False, True], ids=["alone", "processes"])


def on_sqlite(path: Path, body: Callable[[Database], Awaitable[Any]], shared: bool) -> Any:
    async def main() -> Any:
        db = Database(f"sqlite:///{path}", shared=shared)
        try:
            async with db.write_inline() as conn:
                await execute(conn, "CREATE TABLE notes (n INTEGER PRIMARY KEY, by TEXT)", {})
            return await body(db)
        finally:
            await db.dispose()

    return asyncio.run(main())


def committed(path: Path) -> list[int]:
    """What another connection sees: committed rows only."""
    with sqlite3.connect(path) as other:
        return [n for (n,) in other.execute("SELECT n FROM notes ORDER BY n")]


@both_modes
def test_each_writer_returns_once_its_rows_are_committed(tmp_path: Path, shared: bool) -> None:
    path = tmp_path / "solder.db"
    seen: dict[int, list[int]] = {}

    async def write(db: Database, n: int) -> None:
        async with db.write_inline() as conn:
            await execute(conn, "INSERT INTO notes (n, by) VALUES (:n, 'w')", {"n": n})
        seen[n] = committed(path)  # at once, from another connection

    async def body(db: Database) -> None:
        await asyncio.gather(*(write(db, n) for n in range(20)))

    on_sqlite(path, body, shared)
    assert committed(path) == list(range(20))
    assert all(n in rows for n, rows in seen.items()), "a writer returned before its commit"


@both_modes
def test_a_failing_writer_takes_back_its_own_rows_only(tmp_path: Path, shared: bool) -> None:
    path = tmp_path / "solder.db"

    async def write(db: Database, n: int) -> None:
        async with db.write_inline() as conn:
            await execute(conn, "INSERT INTO notes (n, by) VALUES (:n, 'w')", {"n": n})
            if n % 3 == 0:
                await execute(
                    conn, "INSERT INTO notes (n, by) VALUES (:n, 'again')", {"n": n + 100}
                )
                raise LookupError(n)
            if n % 3 == 1:  # a statement that fails: the primary key is taken
                await execute(conn, "INSERT INTO notes (n, by) VALUES (:n, 'twice')", {"n": n})

    async def body(db: Database) -> list[Any]:
        return await asyncio.gather(*(write(db, n) for n in range(12)), return_exceptions=True)

    outcomes = on_sqlite(path, body, shared)

    assert [type(o).__name__ for o in outcomes[:3]] == ["LookupError", "IntegrityError", "NoneType"]
    assert committed(path) == [n for n in range(12) if n % 3 == 2]


@both_modes
def test_a_writer_that_suspends_inside_its_block_is_not_joined(
    tmp_path: Path, shared: bool
) -> None:
    """Writers that come while one waits inside its block write in the next transaction:
    when the waiting one fails, their rows stay."""
    path = tmp_path / "solder.db"
    inside = asyncio.Event()

    async def slow(db: Database) -> None:
        async with db.write_inline() as conn:
            await execute(conn, "INSERT INTO notes (n, by) VALUES (1000, 'slow')", {})
            inside.set()
            await asyncio.sleep(0.05)
            raise LookupError("the slow writer fails")

    async def quick(db: Database, n: int) -> None:
        await inside.wait()
        async with db.write_inline() as conn:
            await execute(conn, "INSERT INTO notes (n, by) VALUES (:n, 'quick')", {"n": n})

    async def body(db: Database) -> None:
        results = await asyncio.gather(
            slow(db), *(quick(db, n) for n in range(5)), return_exceptions=True
        )
        assert isinstance(results[0], LookupError)
        assert results[1:] == [None] * 5

    on_sqlite(path, body, shared)
    assert committed(path) == list(range(5))


@both_modes
def test_writers_after_a_cancelled_one_go_on(tmp_path: Path, shared: bool) -> None:
    path = tmp_path / "solder.db"

    async def body(db: Database) -> None:
        async def cancelled() -> None:
            async with db.write_inline() as conn:
                await execute(conn, "INSERT INTO notes (n, by) VALUES (1, 'cancelled')", {})
                await asyncio.sleep(10)

        task = asyncio.create_task(cancelled())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with db.write_inline() as conn:
            await execute(conn, "INSERT INTO notes (n, by) VALUES (2, 'after')", {})

    on_sqlite(path, body, shared)
    assert committed(path) == [2]


@both_modes
def test_when_sqlite_ends_the_transaction_no_writer_in_it_is_told_it_was_written(
    tmp_path: Path, shared: bool
) -> None:
    """SQLite rolls a transaction back by itself on some errors (a full disk, an I/O
    error); here a writer does it. Every writer that shared it is told it failed."""
    path = tmp_path / "solder.db"

    async def write(db: Database, n: int) -> None:
        async with db.write_inline() as conn:
            await execute(conn, "INSERT INTO notes (n, by) VALUES (:n, 'w')", {"n": n})

    async def fault(db: Database) -> None:
        async with db.write_inline() as conn:
            await execute(conn, "ROLLBACK", {})

    async def body(db: Database) -> list[Any]:
        return list(
            await asyncio.gather(
                write(db, 0), write(db, 1), fault(db), write(db, 3), return_exceptions=True
            )
        )

    outcomes = on_sqlite(path, body, shared)

    rows = committed(path)
    told = {n: outcomes[i] for i, n in ((0, 0), (1, 1), (3, 3))}
    assert {n for n, outcome in told.items() if outcome is None} == set(rows)
    assert all(isinstance(o, Unavailable) for n, o in told.items() if n not in rows)
    assert isinstance(outcomes[2], sqlite3.Error)
    assert 3 in rows, "the writers after it write in a transaction of their own"
    # Alone, the two before it shared its transaction; of several processes, each
    # writer commits its own.
    assert rows == ([0, 1, 3] if shared else [3])
