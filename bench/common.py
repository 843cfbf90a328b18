"""What every scenario of the suite shares: the machine's description, wrk's load, and
Solder started as in production."""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import os
import platform
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
from cryptography.fernet import Fernet
from scale_out import (
    RUN_TIMEOUT,
    SOLDER,
    BenchError,
    Process,
    answers_http,
    console,
    cpu_seconds,
    free_port,
    wait_until,
)

# What autovacuum would do after a load on PostgreSQL (it is off on the test server).
VACUUM = "VACUUM ANALYZE executions, steps, procrastinate_jobs, procrastinate_events"
WRK_MISSING = "wrk is missing: install it (Debian/Ubuntu: `apt-get install -y wrk`) and rerun"
ROOT = Path(__file__).resolve().parent.parent  # the repository
_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


@dataclass(frozen=True)
class Load:
    """What one wrk run measured."""

    rate: float  # requests per second
    p99_ms: float
    errors: int  # socket errors: connect, read, write and timeouts


def machine() -> list[str]:
    """Lines saying where and when the figures were measured."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    free = subprocess.run(["free", "-g"], capture_output=True, text=True, check=False).stdout
    load = ", ".join(f"{avg:.2f}" for avg in os.getloadavg())
    git = ["git", "-C", str(Path(__file__).parent)]
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "solder"], capture_output=True, text=True
    )
    return [
        f"date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; code: commit {commit.stdout.strip()}"
        + (" with uncommitted changes under solder/" if dirty.stdout.strip() else ""),
        f"nproc: {os.cpu_count()}; CPU: {cpu}; Python {platform.python_version()}",
        *(f"free -g: {line}" for line in free.splitlines()[:2]),
        f"load average (1, 5, 15 min): {load}",
    ]


def require_wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise BenchError(WRK_MISSING)
    return path


def wrk(url: str, headers: dict[str, str], seconds: float, connections: int = 16) -> Load:
    """Load `url` for `seconds` with wrk (2 threads); its rate and p99 latency."""
    args = [require_wrk(), "--latency", "-t2", f"-c{connections}", f"-d{seconds:g}s"]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    done = subprocess.run(
        [*args, url], capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    if done.returncode != 0:
        raise BenchError(f"wrk failed on {url}:\n{done.stderr or done.stdout}")
    return parse_wrk(done.stdout, url)


def parse_wrk(output: str, url: str) -> Load:
    if match := re.search(r"Non-2xx or 3xx responses: (\d+)", output):
        raise BenchError(f"{match.group(1)} error answers from {url}:\n{output}")
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s|m)\s*$", output, re.MULTILINE)
    if rate is None or p99 is None:
        raise BenchError(f"unexpected wrk output for {url}:\n{output}")
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    return Load(
        rate=float(rate.group(1)),
        p99_ms=float(p99.group(1)) * _UNITS[p99.group(2)],
        errors=sum(map(int, errors.groups())) if errors else 0,
    )


def elapsed(since: float) -> str:
    seconds = time.monotonic() - since
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


# Solder as in production, for the scenarios that run workflows (runs.py,
# engine_overhead.py): `solder serve` on SQLite; on PostgreSQL `solder serve --no-worker`
# and `solder worker` processes (with no workers, `solder serve` runs its own), each
# database made for the run and dropped after it.

BENCH_TENANT = "bench"
STALL_SECONDS = 30.0  # no execution ended for this long: Solder is stuck


def serving_children(pid: int) -> list[int]:
    """The serving processes of the supervisor `pid` (`solder serve --processes`)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    return [int(child) for child in children]


@dataclass
class Stack:
    """A running Solder (and the loopback upstream), its API key and its database."""

    backend: str
    database_url: str
    base: str
    headers: dict[str, str]
    api: Process
    workers: list[Process]
    upstream_url: str
    db: sqlite3.Connection | psycopg.Connection[tuple[Any, ...]]
    upstream_pid: int | None = None
    serve_worker: bool = False  # `solder serve` runs a worker beside the `workers`

    def server_pids(self) -> dict[str, int]:
        """The processes that make up the server, by the name the tables give them."""
        pid = self.api.process.pid
        supervised = serving_children(pid)
        api = "API " if self.workers else ""  # `serve --no-worker` beside `solder worker`s
        if supervised:  # `--processes N`: its supervisor, and the N serving processes
            pids = {f"{api}supervisor (serve --processes)": pid}
            pids.update({f"{api}process {n}": child for n, child in enumerate(supervised, 1)})
        else:
            serving = (
                "API (serve, with its worker)" if self.serve_worker else "API (serve --no-worker)"
            )
            pids = {serving if self.workers else "solder serve": pid}
        for n, worker in enumerate(self.workers, 1):
            pids[f"worker {n}"] = worker.process.pid
        return pids

    def server_cpu(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.server_pids().values())

    def check_alive(self) -> None:
        for process in (self.api, *self.workers):
            if not process.alive():
                raise BenchError(f"{process.log.name} died:\n{process.tail()}")

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of a read of Solder's database (`?` placeholders on both backends)."""
        if isinstance(self.db, sqlite3.Connection):
            return self.db.execute(sql, params).fetchall()
        return self.db.execute(sql.replace("?", "%s"), params).fetchall()

    def install(self, username: str, definition: dict[str, Any]) -> tuple[str, str]:
        """Create a user and a workflow, activate it for them: their ids."""
        return install(self.base, self.headers, username, definition)

    def wait_idle(self, since_ms: float, timeout: float = RUN_TIMEOUT) -> float:
        """Wait until no execution started since `since_ms` is pending; fail if one failed.
        How long it took (s)."""
        started = progressed = time.monotonic()
        last = -1
        while True:
            pending, failed = self.query(
                "SELECT count(*) FILTER (WHERE status IN ('queued', 'running', 'crashed')),"
                " count(*) FILTER (WHERE status NOT IN ('queued', 'running', 'crashed',"
                " 'succeeded')) FROM executions WHERE started_at >= ?",
                [int(since_ms)],
            )[0]
            if failed:
                problems = self.query(
                    "SELECT status, error_block, error_message, count(*) FROM executions"
                    " WHERE started_at >= ? AND status <> 'succeeded' GROUP BY 1, 2, 3 LIMIT 5",
                    [int(since_ms)],
                )
                raise BenchError(f"{failed} executions did not succeed: {problems}")
            if not pending:
                return time.monotonic() - started
            self.check_alive()
            if pending != last:
                progressed, last = time.monotonic(), pending
            elif time.monotonic() - progressed > STALL_SECONDS:
                raise BenchError(
                    f"{pending} executions stuck unfinished for {STALL_SECONDS:g} s; the"
                    f" servers' logs say:\n{self.first_error()}"
                )
            if time.monotonic() - started > timeout:
                raise BenchError(f"{pending} executions still unfinished after {timeout:g} s")
            time.sleep(0.2)

    def vacuum(self) -> None:
        """On PostgreSQL, what autovacuum would do after a run (it is off on the test
        server): without statistics, each step's foreign-key check scans `executions`."""
        if not isinstance(self.db, sqlite3.Connection):
            self.db.execute(VACUUM)

    def first_error(self) -> str:
        """The first traceback in the server's logs, or their last lines."""
        for process in (self.api, *self.workers):
            lines = process.log.read_text(errors="replace").splitlines()
            for n, line in enumerate(lines):
                if line.startswith("Traceback"):
                    end = next((i for i in range(n + 1, len(lines)) if lines[i][:1] != " "), n)
                    shown = [lines[n - 1], "  ...", *lines[max(n, end - 8) : end + 1]]
                    return f"{process.log.name}:\n" + "\n".join(shown)
        return "\n".join(f"{p.log.name}:\n{p.tail(10)}" for p in (self.api, *self.workers))


def install(
    base: str, headers: dict[str, str], username: str, definition: dict[str, Any]
) -> tuple[str, str]:
    """Create a user and a workflow through the API at `base`, activate it for them:
    their ids."""
    with httpx.Client(base_url=base, headers=headers, timeout=30) as api:
        user = api.post("/users", json={"username": username})
        flow = api.post("/workflows", json=definition)
        if user.status_code != 201 or flow.status_code != 201:
            raise BenchError(f"could not create the workflow: {user.text} {flow.text}")
        ids = user.json()["userId"], flow.json()["workflowId"]
        body = {"userId": ids[0], "workflowId": ids[1]}
        active = api.put("/workflows/activate", json=body)
        if active.status_code != 200:
            raise BenchError(f"could not activate the workflow: {active.text}")
    return ids


def solder_cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [*SOLDER, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0:
        raise BenchError(f"solder {' '.join(args)} failed:\n{done.stderr}")
    return done.stdout


@contextlib.contextmanager
def postgres_database(admin_url: str, name: str, template: str = "") -> Iterator[str]:
    """A new PostgreSQL database (its URL), empty or a copy of `template`, dropped
    afterwards."""
    admin_url = admin_url.rstrip("/")
    drop = f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    with psycopg.connect(f"{admin_url}/postgres", autocommit=True) as admin:
        admin.execute(drop)
        admin.execute(f"CREATE DATABASE {name}" + (f" TEMPLATE {template}" if template else ""))
    try:
        yield f"{admin_url}/{name}"
    finally:
        with psycopg.connect(f"{admin_url}/postgres", autocommit=True) as admin:
            admin.execute(drop)


@contextlib.contextmanager
def solder_stack(
    backend: str,
    postgres_url: str | None,
    workdir: Path,
    *,
    workers: int,
    upstream: bool = False,
    settings: Mapping[str, str] | None = None,
    serve_worker: bool = False,
) -> Iterator[Stack]:
    """Solder as in production on `backend` (SQLite or PostgreSQL), in `workdir`, with
    `settings` (`SOLDER_*` variables) changed; on PostgreSQL `solder serve` runs a worker
    of its own if it has no `workers` beside it, or if `serve_worker`."""
    with contextlib.ExitStack() as cleanup:
        if backend == "SQLite":
            url = f"sqlite:///{workdir / 'solder.db'}"
        else:
            assert postgres_url is not None
            name = workdir.name.replace("-", "_").lower()  # solder_bench_<scenario>_<random>
            url = cleanup.enter_context(postgres_database(postgres_url, name))
        env = {k: v for k, v in os.environ.items() if not k.startswith("SOLDER_")}
        env.update(
            SOLDER_DATABASE_URL=url,
            SOLDER_DATA_DIR=str(workdir / "data"),
            SOLDER_SECRET_KEY=Fernet.generate_key().decode(),
            SOLDER_HTTP_ALLOW_PRIVATE_NETWORKS="true",  # the upstream is on loopback
            PYTHONUNBUFFERED="1",
        )
        env.update(settings or {})
        key = solder_cli(env, "keys", "create", "--tenant", BENCH_TENANT).strip().splitlines()[-1]
        processes: list[Process] = []

        def start(name: str, args: list[str], ready: Callable[[], bool]) -> Process:
            process = Process.start(name, args, env, workdir / f"{name}.log")
            processes.append(process)
            cleanup.callback(process.stop)
            wait_until(ready, name, process.process)
            return process

        try:
            upstream_url, upstream_pid = "", None
            if upstream:
                port = free_port()
                upstream_url = f"http://127.0.0.1:{port}"
                script = str(Path(__file__).with_name("scale_out.py"))
                upstream_pid = start(
                    "upstream",
                    [sys.executable, script, "--upstream", str(port)],
                    lambda: answers_http(f"{upstream_url}/echo?n=1"),
                ).process.pid
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            sqlite = backend == "SQLite"
            api = start(
                "serve",
                [
                    *SOLDER,
                    "serve",
                    "--port",
                    str(port),
                    *(["--no-worker"] if workers and not sqlite and not serve_worker else []),
                ],
                lambda: answers_http(f"{base}/health"),
            )
            started = []
            for n in range(0 if sqlite else workers):
                log = workdir / f"worker-{n + 1}.log"
                started.append(start(log.stem, [*SOLDER, "worker"], functools.partial(_ready, log)))
            db: sqlite3.Connection | psycopg.Connection[tuple[Any, ...]]
            if sqlite:
                db = sqlite3.connect(workdir / "solder.db", isolation_level=None)
            else:
                db = psycopg.connect(url, autocommit=True)
                if db.execute("SHOW autovacuum").fetchone() == ("off",):
                    cleanup.enter_context(autovacuum(url))
            cleanup.callback(db.close)
            headers = {"Authorization": f"bearer {key}", "x-api-version": "2025-09"}
            yield Stack(
                backend,
                url,
                base,
                headers,
                api,
                started,
                upstream_url,
                db,
                upstream_pid,
                serve_worker,
            )
        except BenchError:
            for process in processes:
                console.print(f"--- {process.log.name} (last lines)\n{process.tail()}")
            raise


def settle(postgres_url: str | None = None) -> None:
    """Put on disk what making a data set left in memory, before it is measured:
    PostgreSQL's dirty buffers (a CHECKPOINT, when `postgres_url` is given) and the
    kernel's dirty pages (`sync`). Otherwise their writeback runs during the measurement
    that follows (in the full suite, PostgreSQL's logs read once ran during the
    checkpoint of the 1.1 million rows generated before it)."""
    if postgres_url is not None:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute("CHECKPOINT")
    os.sync()


# How often the stand-in for autovacuum (see `autovacuum`) vacuums the job queue, and
# how often it analyzes the tables that churn.
VACUUM_QUEUE_SECONDS = 5.0
ANALYZE_SECONDS = 10.0
# The stand-in's ANALYZEs of `executions` so far: (start, end), ms since the epoch. An
# open loop's slowest runs are placed against them (`runs.during_analyze`).
ANALYZES: list[tuple[float, float]] = []


@contextlib.contextmanager
def autovacuum(url: str) -> Iterator[None]:
    """On a PostgreSQL server with autovacuum off (as the benchmark's is), what it does in
    production as docs/deploy.md sets it up, during a load:

    - VACUUM procrastinate's job table every few seconds. Every run inserts and deletes a
      job; without it, each job fetch wades through more dead rows as a load goes on (the
      open loop's p99 at 300 a second, 60 s loops: a median of 98 ms in eight runs
      without it, 57 ms with it, bench/RESULTS.md).
    - ANALYZE the tables that churn. Without it the planner keeps statistics from a
      quiet time (an empty queue), and procrastinate's job fetch, planned from them,
      costs O(waiting jobs) per job on a backlog: the backlog of a burst then drains at a
      few executions a second (docs/decisions.md, migration 0006).
    """
    stop = threading.Event()

    def run() -> None:
        analyze_every = round(ANALYZE_SECONDS / VACUUM_QUEUE_SECONDS)
        with psycopg.connect(url, autocommit=True) as conn:
            for tick in itertools.count(1):
                if stop.wait(VACUUM_QUEUE_SECONDS):
                    return
                conn.execute("VACUUM (ANALYZE) procrastinate_jobs")
                if tick % analyze_every == 0:
                    started = time.time() * 1000
                    conn.execute("ANALYZE executions, steps")
                    ANALYZES.append((started, time.time() * 1000))

    thread = threading.Thread(target=run, name="autovacuum", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _ready(log: Path) -> bool:
    return log.exists() and "started: running executions" in log.read_text(errors="replace")


def rss_bytes(pid: int) -> int:
    """A process's resident memory (VmRSS), 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def percentile(values: Sequence[float], fraction: float) -> float:
    """The value below which `fraction` of `values` lie (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


@contextlib.contextmanager
def work_tree(rev: str) -> Iterator[Path]:
    """`rev` checked out in a temporary work tree of this repository, removed after."""
    with tempfile.TemporaryDirectory(prefix="solder-work-tree-") as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(tree), rev],
            check=True,
            capture_output=True,
        )
        try:
            yield tree
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                check=False,
                capture_output=True,
            )
