"""A private PostgreSQL server that tests can stop and start, apart from the shared one.

Run as root, the server runs as the `postgres` OS user (initdb refuses root) in a directory of
its own under the system temp dir, since pytest's temp dirs are closed to other users.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from tests.conftest import free_port, need_service

TIMEOUT = 60.0


def _bindir() -> Path | None:
    if pg_config := shutil.which("pg_config"):
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True
            )
            if (Path(out.stdout.strip()) / "pg_ctl").exists():
                return Path(out.stdout.strip())
        except (OSError, subprocess.CalledProcessError):
            pass
    dirs = [Path(d) for d in glob.glob("/usr/lib/postgresql/*/bin") if Path(d, "pg_ctl").exists()]
    version = lambda d: [int(n) for n in d.parent.name.split(".") if n.isdigit()]  # noqa: E731
    return max(dirs, key=version) if dirs else None


class PgCluster:
    """A private PostgreSQL server for tests that stop and start the database."""

    def __init__(self, root: Path) -> None:
        bindir = _bindir()
        if bindir is None:
            raise RuntimeError("no PostgreSQL binaries (initdb, pg_ctl) found")
        self.bindir = bindir
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            self.root = Path(tempfile.mkdtemp(prefix="pgcluster-"))
            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
        else:
            self.root = root
            self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o700)
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port = free_port()

    @classmethod
    def available(cls) -> str | None:
        """None if a private server can be run here; else the reason it cannot."""
        if _bindir() is None:
            return "no PostgreSQL binaries (pg_config --bindir, /usr/lib/postgresql/*/bin)"
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                return "running as root, and there is no `postgres` OS user to run PostgreSQL"
            if shutil.which("runuser") is None:
                return "running as root, and there is no `runuser` to run PostgreSQL as postgres"
        return None

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bindir / tool), *args]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        result = subprocess.run(  # pg_ctl's own -t comes first, with its message
            command, cwd=self.root, env=env, capture_output=True, text=True, timeout=TIMEOUT + 30
        )
        if result.returncode != 0:
            log = self.log.read_text(errors="replace") if self.log.exists() else "(no log)"
            raise RuntimeError(
                f"{' '.join(command)} failed ({result.returncode}):\n"
                f"{result.stdout}{result.stderr}\n--- {self.log} ---\n{log}"
            )

    def init(self) -> None:
        """Create the cluster (initdb) and write its settings: port, sockets, speed over safety."""
        options = "-A trust -U postgres -E UTF8 --no-locale --no-sync"
        self._run("initdb", *options.split(), "-D", str(self.data))
        with (self.data / "postgresql.conf").open("a") as conf:  # appending keeps its owner
            conf.write(
                f"port = {self.port}\n"
                "listen_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.root}'\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                "shared_buffers = 16MB\nmax_connections = 100\n"
            )

    def start(self) -> None:
        """Start the server (on the same port as before); return once it accepts connections."""
        wait = ["-w", "-t", str(int(TIMEOUT))]
        self._run("pg_ctl", "start", *wait, "-D", str(self.data), "-l", str(self.log))

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (fast or immediate); return once connections are refused.

        A fast stop that has not ended within 20 s becomes an immediate one (as an
        operator would do): seen once in CI on a loaded machine, with no cause in the
        server's log. Its log is then printed, for the test's captured output.
        """
        try:
            self._run("pg_ctl", "stop", "-w", "-t", "20", "-m", mode, "-D", str(self.data))
        except RuntimeError:
            tail = self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""
            print(f"PostgreSQL's {mode} stop took over 20 s:\n{tail}\n{self._processes()}")
            if mode != "immediate":
                with contextlib.suppress(RuntimeError):
                    self._run(
                        "pg_ctl", "stop", "-w", "-t", "20", "-m", "immediate", "-D", str(self.data)
                    )
            # Seen twice in CI on a loaded machine: the postmaster killed its children
            # and still waited for one. Give it time, and say which one it was.
            deadline = time.monotonic() + 120
            while (self.data / "postmaster.pid").exists():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"PostgreSQL did not stop:\n{self._processes()}") from None
                time.sleep(0.5)
        deadline = time.monotonic() + TIMEOUT
        while self._accepts():
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL on port {self.port} still accepts after stop")
            time.sleep(0.01)

    def _processes(self) -> str:
        """The server's processes with their state (D: waiting on the disk) and wait
        channel, for a stop that hangs."""
        listing = subprocess.run(
            ["ps", "-u", "postgres", "-o", "pid,ppid,stat,wchan:32,etime,args"],
            capture_output=True,
            text=True,
        )
        return listing.stdout + listing.stderr

    def _accepts(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def create_database(self, name: str) -> None:
        with psycopg.connect(self.url(), autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def destroy(self) -> None:
        """Stop the server if it runs (immediately), and remove its files."""
        try:
            if self.running():
                self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def pg_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgCluster]:
    """A started private PostgreSQL server, destroyed after the test."""
    need_service(PgCluster.available())
    cluster = PgCluster(tmp_path_factory.mktemp("pgcluster"))
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()
