"""One serving process per database: its dispatcher owns every unfinished execution there.

At start a server requeues the executions left `running`, which is right only when no
other server is running them. SQLite: a lock file beside the database. PostgreSQL: a
session advisory lock, held on a connection of its own. Both vanish with the process,
however it ends. Several processes on PostgreSQL need heartbeats first (the scale-out).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from solder.errors import SolderError
from solder.store.database import Database

# pg_try_advisory_lock takes a bigint; this one is Solder's ("solder" in ASCII).
_ADVISORY_KEY = 0x736F6C646572


class AlreadyServing(SolderError):
    """Another Solder process is serving this database."""


class ServeLock:
    """Held while this process serves `db`."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._fd: int | None = None
        self._conn: AsyncConnection | None = None

    async def acquire(self) -> None:
        if self.db.sqlite_file is not None:
            self._lock_file(self.db.sqlite_file)
            return
        conn = await self.db.engine.connect()
        held = (await conn.execute(text(f"SELECT pg_try_advisory_lock({_ADVISORY_KEY})"))).scalar()
        await conn.commit()
        if not held:
            await conn.close()
            raise AlreadyServing(
                "another Solder process is serving this PostgreSQL database: stop it, or "
                "point this one at another database (one serving process per database in "
                "this version)"
            )
        self._conn = conn

    async def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    def _lock_file(self, database: Path) -> None:
        path = database.with_name(database.name + ".lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AlreadyServing(
                f"another Solder process is serving {database}: stop it, or give this one "
                "its own SOLDER_DATA_DIR (one process per SQLite database; use PostgreSQL "
                "to run several)"
            ) from None
        self._fd = fd
