"""One serving process per SQLite database: its dispatcher owns every unfinished execution.

At start the embedded dispatcher marks the executions left `running` as crashed and runs
them again, which is right only when no other process is running them: a lock file
beside the database, held while serving, vanishes with the process however it ends.
PostgreSQL needs no such lock: workers there heartbeat, and only a dead worker's
executions are taken back (`solder/workers.py`).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from solder.errors import SolderError


class AlreadyServing(SolderError):
    """Another Solder process is serving this database."""


class ServeLock:
    """Held while this process serves a SQLite database file."""

    def __init__(self, database: Path) -> None:
        self.path = database.with_name(database.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AlreadyServing(
                f"another Solder process is serving {self.path.with_suffix('')}: stop it, or "
                "give this one its own SOLDER_DATA_DIR (one process per SQLite database; use "
                "PostgreSQL to run several)"
            ) from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
