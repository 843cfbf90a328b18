"""Serving a SQLite database: which processes do, and their turns to write.

- `ServeLock`: one `solder serve` per database file (its supervisor, when it runs
  several processes), held while serving: a second one is refused with a clear message.
- `ProcessMarks`: which of the serving processes are alive, so that the executions a
  dead one left running are taken back while the others run on.
- `FileLock`: the processes' turns to write, and the background work that one process
  at a time does (`Database.try_lock`).

Each is a lock file beside the database, which vanishes with its process however it ends.
PostgreSQL needs none of them: workers there heartbeat, only a dead worker's executions
are taken back (`solder/workers.py`), and advisory locks do the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import os
from pathlib import Path

from solder.errors import SolderError
from solder.ids import random_chars


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
                "give this one its own SOLDER_DATA_DIR (one `solder serve` per SQLite "
                "database: `solder serve --processes N` serves one with several processes)"
            ) from None
        self._fd = fd

    def fileno(self) -> int:
        """The lock file's descriptor, while held (the lock lives as long as it is open)."""
        assert self._fd is not None, "not held"
        return self._fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class FileLock:
    """An exclusive lock on a file, shared by the processes of this machine (`flock`).

    Taken by an event loop's task: without waiting when it is free, else in a thread, so
    that the loop runs on meanwhile. Closing the file, or the process ending however it
    does, gives it back.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def _fileno(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        return self._fd

    def try_acquire(self) -> bool:
        """Take the lock if it is free; whether it was."""
        try:
            fcntl.flock(self._fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    async def acquire(self) -> None:
        if self.try_acquire():
            return
        fd = self._fileno()
        waiting = asyncio.get_running_loop().run_in_executor(None, fcntl.flock, fd, fcntl.LOCK_EX)
        try:
            await asyncio.shield(waiting)
        except asyncio.CancelledError:
            # The thread takes the lock all the same: give it back as soon as it has.
            waiting.add_done_callback(functools.partial(_give_back, fd))
            raise

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _give_back(fd: int, taken: asyncio.Future[None]) -> None:
    if not taken.cancelled() and taken.exception() is None:
        with contextlib.suppress(OSError):  # closed meanwhile: given back already
            fcntl.flock(fd, fcntl.LOCK_UN)


class ProcessMarks:
    """Which of the processes serving a SQLite database are alive.

    Each serving process draws a token and holds an exclusive lock on a file of that
    name in a directory beside the database for as long as it lives; the leases of the
    executions it claims start with the token. An execution left `running` under a
    token whose file nobody holds was left by a process that died: it is taken back
    (`EmbeddedDispatcher.reclaim`), while its siblings run on.
    """

    TOKEN_LENGTH = 8

    def __init__(self, database: Path) -> None:
        self.directory = database.with_name(database.name + ".processes")
        self.token = ""
        self._fd: int | None = None

    def hold(self) -> str:
        """Draw this process's token and mark it alive; the token."""
        self.directory.mkdir(mode=0o700, exist_ok=True)
        self.token = random_chars(self.TOKEN_LENGTH)
        # Locked before it has its name: a sibling that sees the file sees it held.
        drawn = self.directory / f".{self.token}.new"
        fd = os.open(drawn, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.rename(drawn, self.directory / self.token)
        self._fd = fd
        return self.token

    def alive(self, token: str) -> bool:
        """Whether the process of `token` is alive (this one's own is)."""
        if token == self.token:
            return True
        try:
            fd = os.open(self.directory / token, os.O_RDWR)
        except (FileNotFoundError, NotADirectoryError, OSError):
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def forget_dead(self) -> None:
        """Remove the files of dead processes (whose executions were taken back)."""
        with contextlib.suppress(FileNotFoundError):
            for entry in self.directory.iterdir():
                if not entry.name.startswith(".") and not self.alive(entry.name):
                    with contextlib.suppress(FileNotFoundError):
                        entry.unlink()

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(FileNotFoundError):
                (self.directory / self.token).unlink()
            os.close(self._fd)
            self._fd = None
