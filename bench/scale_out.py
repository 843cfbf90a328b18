"""Scale-out benchmark: Solder on PostgreSQL, with real processes.

One `solder serve --no-worker` takes runs over HTTP; `solder worker` processes (one, then
two) run them. Each figure is measured several times and the median reported:

- executions per second, end to end: from the first run submitted to the last one ended,
  for a webhook + `transform` workflow and for a webhook + `http` + `transform` one (the
  `http` block calls a loopback server this benchmark starts in its own process);
- accepted runs per second on the API alone (no worker running, so with the backpressure
  of `SOLDER_QUEUE_HIGH_WATER` off), and how fast workers alone then run that backlog;
- PostgreSQL bytes per execution: growth of the executions table (its indexes and TOAST
  included), and WAL written, counted two ways: the records of this benchmark's database
  (read back with pg_walinspect), and the cluster-wide LSN difference, which also counts
  whatever else the server did meanwhile; also the WAL of the retention purge;
- CPU milliseconds per execution of the API process, the workers and the PostgreSQL
  server (read from /proc when the server runs on this machine), which, unlike rates,
  carry over to other machines; and the CPU other processes used meanwhile (noise).

Every measurement ends with a VACUUM of the tables it dirtied, as autovacuum would do.

    .venv/bin/python bench/scale_out.py [--postgres-url postgresql://postgres@127.0.0.1:5432]

It creates the database `solder_bench_<pid>` and drops it at the end (bench/RESULTS.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs

import httptools
import httpx
import psycopg
import uvloop
from cryptography.fernet import Fernet
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

SOLDER = [sys.executable, "-m", "solder"]
START_TIMEOUT = 60.0
RUN_TIMEOUT = 300.0
PENDING = ("queued", "running", "crashed")
# Piped (into a file, say), the table is still printed whole.
console = Console(width=None if sys.stdout.isatty() else 132)


class BenchError(Exception):
    """Solder misbehaved (an error answer, a lost or failed run): the figures would lie."""


def transform_workflow() -> dict[str, Any]:
    return {
        "name": "Bench transform",
        "trigger": {"type": "webhook"},
        "blocks": [
            {
                "name": "double",
                "connector": "transform",
                "config": {"expression": "{{ trigger.n * 2 }}"},
            }
        ],
    }


def http_workflow(upstream_url: str) -> dict[str, Any]:
    return {
        "name": "Bench http",
        "trigger": {"type": "webhook"},
        "blocks": [
            {
                "name": "call",
                "connector": "http",
                "config": {"url": f"{upstream_url}/echo", "query": {"n": "{{ trigger.n }}"}},
            },
            {
                "name": "double",
                "connector": "transform",
                "config": {"expression": "{{ blocks.call.n * 2 }}"},
            },
        ],
    }


# The loopback upstream, run in a process of its own so that it competes with the load
# generator for a core, not for this process's GIL. A real deployment's upstream is on
# another machine: this one is as cheap as Python can make it, so that scenario 2's two
# cores go to Solder (the standard library's threaded server it replaced cost 118 to 138
# µs of CPU a request in a probe, 0.16 to 0.22 ms a run under scenario 2's load on
# PostgreSQL, about a tenth of a run's; bench/RESULTS.md).


class EchoProtocol(asyncio.Protocol):
    """`GET /echo?n=3` answers `{"n": 3}` at once, keeping the connection open (HTTP/1.1
    on uvloop, parsed by httptools, as uvicorn serves it)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transport, which sets TCP_NODELAY (asyncio's does too).
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.answer(400, b'{"error": "not HTTP/1.1"}', keep_alive=False)

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        query = parse_qs(httptools.parse_url(self.url).query or b"")
        self.url = b""
        try:
            n = int(query.get(b"n", [b"0"])[0])
        except ValueError:
            self.answer(400, b'{"error": "n is not an integer"}', keep_alive=False)
            return
        self.answer(200, json.dumps({"n": n}).encode(), self.parser.should_keep_alive())

    def answer(self, status: int, body: bytes, keep_alive: bool) -> None:
        assert self.transport is not None
        reason = b"OK" if status == 200 else b"Bad Request"
        self.transport.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s"
            % (status, reason, len(body), b"" if keep_alive else b"Connection: close\r\n", body)
        )
        if not keep_alive:
            self.transport.close()


def serve_upstream(port: int) -> None:
    async def serve() -> None:
        # A backlog of 128: more clients connecting at once than the backlog overflow it,
        # and a connection the client took as made could wait for its timeout (seen with
        # the standard library's 5 and 32 clients at once).
        server = await asyncio.get_running_loop().create_server(
            EchoProtocol, "127.0.0.1", port, backlog=128
        )
        async with server:
            await server.serve_forever()

    uvloop.run(serve())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(condition: Callable[[], bool], what: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not condition():
        if process.poll() is not None or time.monotonic() > deadline:
            raise BenchError(f"{what} did not start (exit code {process.poll()})")
        time.sleep(0.05)


def answers_http(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def proc_stat(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name (state, ppid, ...); [] if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def cpu_seconds(pid: int, *, reaped: bool = False) -> float:
    """CPU time a process has used; with `reaped`, its children that have ended too."""
    fields = proc_stat(pid)
    if not fields:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    if reaped:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / CLOCK_TICKS


def children_of(parent: int) -> list[int]:
    pids = [int(path.name) for path in Path("/proc").iterdir() if path.name.isdigit()]
    return [pid for pid in pids if (fields := proc_stat(pid)) and int(fields[1]) == parent]


def machine_busy_seconds() -> float:
    """CPU time every process of the machine has used, summed over its CPUs."""
    first = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, first[1:9])
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


@dataclass
class CpuUse:
    """CPU seconds used so far, by each part of the benchmark and by the whole machine."""

    at: float
    api: float
    workers: dict[int, float]
    postgres: float  # the whole server: every database, its background processes
    rest: float  # this process and the upstream
    machine: float

    def since(self, before: CpuUse) -> dict[str, float]:
        """Seconds of CPU used between two readings, and `others`: cores used on average
        by processes this benchmark did not start."""
        spent = {
            "api": self.api - before.api,
            "workers": sum(
                used - before.workers.get(pid, 0.0) for pid, used in self.workers.items()
            ),
            "postgres": self.postgres - before.postgres,
            "rest": self.rest - before.rest,
        }
        ours = sum(spent.values())
        spent["others"] = max(0.0, self.machine - before.machine - ours) / (self.at - before.at)
        return spent


@dataclass
class Process:
    """A child process whose output goes to a log file."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(cls, name: str, args: list[str], env: dict[str, str], log: Path) -> Process:
        with log.open("ab") as out:
            process = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)
        return cls(name, process, log)

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> int:
        """SIGTERM, then the exit code (SIGKILL if it has not ended within a minute)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()

    def says(self, text: str) -> bool:
        return self.log.exists() and text in self.log.read_text(errors="replace")

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class Installed:
    """A workflow activated for one user, ready to run."""

    label: str
    user_id: str
    workflow_id: str


@dataclass
class Sample:
    rate: float  # runs per second
    table_bytes: float  # executions table growth per run
    wal_bytes: float  # this database's WAL records per run
    cluster_wal_bytes: float  # cluster-wide LSN difference per run
    sessions: float = 0.0  # PostgreSQL sessions opened per 100 runs
    api_ms: float = 0.0  # CPU per run: the API process
    worker_ms: float = 0.0  # the workers (their start included when they start during it)
    postgres_ms: float = 0.0  # the whole PostgreSQL server
    others: float = 0.0  # cores used meanwhile by processes the benchmark did not start


@dataclass
class Results:
    samples: dict[str, list[Sample]] = field(default_factory=dict)
    compacted_bytes: float = 0.0
    log_bytes: dict[str, float] = field(default_factory=dict)
    load: list[float] = field(default_factory=list)  # 1-minute load averages seen
    other_sessions: int = 0  # most client sessions seen on other databases at once
    server: str = ""
    warnings: list[str] = field(default_factory=list)

    def add(self, key: str, sample: Sample) -> None:
        self.samples.setdefault(key, []).append(sample)


def per_run(spent: dict[str, float], runs: int) -> dict[str, float]:
    """CPU milliseconds per run, and the cores other processes used meanwhile."""
    return {
        "api_ms": 1000 * spent["api"] / runs,
        "worker_ms": 1000 * spent["workers"] / runs,
        "postgres_ms": 1000 * spent["postgres"] / runs,
        "others": spent["others"],
    }


class Bench:
    """The processes, the database and the measurements of one benchmark run."""

    def __init__(self, admin_url: str, workdir: Path, clients: int, concurrency: int) -> None:
        self.admin_url = admin_url.rstrip("/")
        self.database = f"solder_bench_{os.getpid()}"
        self.url = f"{self.admin_url}/{self.database}"
        self.workdir = workdir
        self.clients = clients
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SOLDER_")}
        self.env.update(
            SOLDER_DATABASE_URL=self.url,
            SOLDER_DATA_DIR=str(workdir / "data"),
            # One key on every process: a process with another could not read credentials.
            SOLDER_SECRET_KEY=Fernet.generate_key().decode(),
            SOLDER_HTTP_ALLOW_PRIVATE_NETWORKS="true",
            SOLDER_WORKER_CONCURRENCY=str(concurrency),
            # The API alone queues backlogs of `--backlog` runs with no worker running:
            # with the backpressure on, every accept past the high-water mark (100)
            # would wait its second for workers that are not there, and the figure would
            # be that wait's, not the API's.
            SOLDER_QUEUE_HIGH_WATER="1000000",
            PYTHONUNBUFFERED="1",
        )
        self.processes: list[Process] = []
        self.workers: list[Process] = []
        self.workers_started = 0
        self.api_url = ""
        self.headers: dict[str, str] = {}
        self.upstream_url = ""
        self.db: psycopg.Connection[tuple[Any, ...]] | None = None
        self.database_oid = 0
        self.walinspect = False
        self.postmaster: int | None = None
        self.warnings: list[str] = []

    # Setup and teardown

    def create_database(self) -> None:
        with psycopg.connect(f"{self.admin_url}/postgres", autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {self.database} WITH (FORCE)")
            admin.execute(f"CREATE DATABASE {self.database}")

    def drop_database(self) -> None:
        if self.db is not None:
            self.db.close()
        with psycopg.connect(f"{self.admin_url}/postgres", autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {self.database} WITH (FORCE)")

    def solder(self, *args: str) -> str:
        done = subprocess.run(
            [*SOLDER, *args], env=self.env, capture_output=True, text=True, timeout=120, check=False
        )
        if done.returncode != 0:
            raise BenchError(f"solder {' '.join(args)} failed:\n{done.stderr}")
        return done.stdout

    def start_upstream(self) -> None:
        port = free_port()
        upstream = Process.start(
            "upstream",
            [sys.executable, __file__, "--upstream", str(port)],
            self.env,
            self.workdir / "upstream.log",
        )
        self.processes.append(upstream)
        self.upstream_url = f"http://127.0.0.1:{port}"
        wait_until(
            lambda: answers_http(f"{self.upstream_url}/echo?n=1"), "the upstream", upstream.process
        )

    def start_api(self) -> None:
        port = free_port()
        api = Process.start(
            "api",
            [*SOLDER, "serve", "--no-worker", "--port", str(port)],
            self.env,
            self.workdir / "api.log",
        )
        self.processes.append(api)
        self.api_url = f"http://127.0.0.1:{port}"
        wait_until(lambda: answers_http(f"{self.api_url}/health"), "solder serve", api.process)

    def start_workers(self, count: int, **settings: str) -> None:
        """Start `count` more workers at once (with these `SOLDER_*` settings changed);
        return when each is taking jobs."""
        started = []
        for _ in range(count):
            self.workers_started += 1
            log = self.workdir / f"worker-{self.workers_started}.log"
            env = {**self.env, **settings}
            worker = Process.start("worker", [*SOLDER, "worker"], env, log)
            self.processes.append(worker)
            self.workers.append(worker)
            started.append(worker)
        for worker in started:
            ready = functools.partial(worker.says, "started: running executions")
            wait_until(ready, "solder worker", worker.process)

    def stop_workers(self) -> None:
        for worker in self.workers:
            code = worker.stop()
            if code != 0:
                self.warn(f"{worker.log.name} exited with code {code} on SIGTERM")
            self.processes.remove(worker)
        self.workers.clear()

    def stop_all(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()

    def connect(self) -> None:
        self.db = psycopg.connect(self.url, autocommit=True)
        self.database_oid = int(
            self.one("SELECT oid FROM pg_database WHERE datname = %s", [self.database])
        )
        # PostgreSQL's CPU is read from /proc when the server runs on this machine.
        backend = int(self.one("SELECT pg_backend_pid()"))
        fields = proc_stat(backend)
        if fields and Path(f"/proc/{backend}/comm").read_text().strip() == "postgres":
            self.postmaster = int(fields[1])
        else:
            self.warn("PostgreSQL is not on this machine: its CPU is not measured")
        try:
            self.db.execute("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
            # Checkpoints (every DROP DATABASE makes one) recycle WAL segments before they
            # are read back: a slot keeps them. Temporary, it goes with this connection,
            # even if the benchmark is killed.
            self.db.execute(
                "SELECT pg_create_physical_replication_slot(%s, true, true)", [self.database]
            )
            self.walinspect = True
        except psycopg.Error as exc:
            self.warn(f"pg_walinspect unavailable ({exc}): WAL per database not measured")

    def install(self, label: str, definition: dict[str, Any]) -> Installed:
        with httpx.Client(base_url=self.api_url, headers=self.headers, timeout=30) as api:
            user = api.post("/users", json={"username": f"bench-{label}"})
            flow = api.post("/workflows", json=definition)
            if user.status_code != 201 or flow.status_code != 201:
                raise BenchError(f"install failed: {user.text} {flow.text}")
            user_id, workflow_id = user.json()["userId"], flow.json()["workflowId"]
            active = api.put(
                "/workflows/activate", json={"userId": user_id, "workflowId": workflow_id}
            )
            if active.status_code != 200:
                raise BenchError(f"activate failed: {active.text}")
        return Installed(label, user_id, workflow_id)

    def setup(self) -> tuple[Installed, Installed]:
        self.create_database()
        self.solder("migrate")
        key = self.solder("keys", "create", "--tenant", "acme").strip().splitlines()[-1]
        self.headers = {"Authorization": f"bearer {key}", "x-api-version": "2025-09"}
        self.connect()
        self.start_upstream()
        self.start_api()
        return (
            self.install("transform", transform_workflow()),
            self.install("http", http_workflow(self.upstream_url)),
        )

    # Database reads

    def one(self, sql: str, params: list[Any] | None = None) -> Any:
        assert self.db is not None
        row = self.db.execute(sql, params).fetchone()
        return None if row is None else row[0]

    def table_size(self) -> int:
        return int(self.one("SELECT pg_total_relation_size('executions')"))

    def lsns(self) -> tuple[str, str]:
        """The WAL insert position (cluster-wide) and the flushed one (what can be read)."""
        assert self.db is not None
        row = self.db.execute(
            "SELECT pg_current_wal_lsn()::text, pg_current_wal_flush_lsn()::text"
        ).fetchone()
        assert row is not None
        return row[0], row[1]

    def wal_between(self, start: tuple[str, str], end: tuple[str, str]) -> tuple[int, int]:
        """WAL bytes (this database's records, the whole cluster) between two positions."""
        cluster = int(
            self.one("SELECT pg_wal_lsn_diff(%s::pg_lsn, %s::pg_lsn)", [end[0], start[0]])
        )
        if not self.walinspect:
            return 0, cluster
        # A record is this database's if it touches one of its relations, or if its
        # transaction did (the commit records).
        ours = f"rel [0-9]+/{self.database_oid}/"
        mine = self.one(
            "WITH r AS (SELECT xid, record_length, block_ref"
            "  FROM pg_get_wal_records_info(%s::pg_lsn, %s::pg_lsn)),"
            " txn AS (SELECT DISTINCT xid FROM r WHERE block_ref ~ %s AND xid <> '0')"
            " SELECT coalesce(sum(record_length), 0) FROM r"
            " WHERE block_ref ~ %s OR xid IN (SELECT xid FROM txn)",
            [start[1], end[1], ours, ours],
        )
        return int(mine), cluster

    def observe_load(self, results: Results) -> None:
        results.load.append(float(Path("/proc/loadavg").read_text().split()[0]))
        others = self.one(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
            " AND datname IS DISTINCT FROM current_database() AND datname <> 'postgres'"
        )
        results.other_sessions = max(results.other_sessions, int(others))

    def warn(self, message: str) -> None:
        console.print(f"[yellow]warning:[/yellow] {message}")
        self.warnings.append(message)

    def cpu(self) -> CpuUse:
        api = [p.process.pid for p in self.processes if p.name == "api"]
        upstream = [p.process.pid for p in self.processes if p.name == "upstream"]
        postgres = 0.0
        if self.postmaster is not None:
            postgres = cpu_seconds(self.postmaster, reaped=True) + sum(
                cpu_seconds(pid) for pid in children_of(self.postmaster)
            )
        return CpuUse(
            at=time.monotonic(),
            api=sum(cpu_seconds(pid) for pid in api),
            workers={w.process.pid: cpu_seconds(w.process.pid) for w in self.workers},
            postgres=postgres,
            rest=sum(os.times()[:2]) + sum(cpu_seconds(pid) for pid in upstream),
            machine=machine_busy_seconds(),
        )

    # Measurements

    async def submit(self, flow: Installed, runs: int, clients: int) -> None:
        """POST `runs` runs, `clients` at a time; every one must be accepted."""
        body = {"userId": flow.user_id, "workflowId": flow.workflow_id}
        limits = httpx.Limits(max_connections=clients)
        sent = 0

        async def client(api: httpx.AsyncClient) -> None:
            nonlocal sent
            while sent < runs:
                n = sent
                sent += 1
                answer = await api.post("/2025-09/run/workflow", json={**body, "data": {"n": n}})
                if answer.status_code != 200:
                    raise BenchError(f"run {n} refused: {answer.status_code} {answer.text}")

        async with httpx.AsyncClient(
            base_url=self.api_url, headers=self.headers, timeout=30, limits=limits
        ) as api:
            await asyncio.gather(*(client(api) for _ in range(clients)))

    def wait_ended(self, since_ms: int, runs: int) -> int:
        """Wait until the runs accepted since `since_ms` have all ended; the last end (ms)."""
        assert self.db is not None
        deadline = time.monotonic() + RUN_TIMEOUT
        while True:
            row = self.db.execute(
                "SELECT count(*), count(*) FILTER (WHERE status = ANY(%s)),"
                " count(*) FILTER (WHERE status = 'succeeded'), max(stopped_at)"
                " FROM executions WHERE started_at >= %s",
                [list(PENDING), since_ms],
            ).fetchone()
            assert row is not None
            total, pending, succeeded, last = row
            if total != runs:
                raise BenchError(f"{runs} runs accepted, {total} executions recorded")
            if pending == 0:
                break
            for worker in self.workers:
                if not worker.alive():
                    raise BenchError(f"{worker.log.name} died:\n{worker.tail()}")
            if time.monotonic() > deadline:
                raise BenchError(f"{pending} executions still unfinished after {RUN_TIMEOUT} s")
            time.sleep(0.1)
        if succeeded != runs:
            failures = self.db.execute(
                "SELECT status, error_block, error_message, count(*) FROM executions"
                " WHERE started_at >= %s AND status <> 'succeeded'"
                " GROUP BY 1, 2, 3 LIMIT 5",
                [since_ms],
            ).fetchall()
            raise BenchError(f"{runs - succeeded} of {runs} executions did not succeed: {failures}")
        return int(last)

    def wait_jobs_done(self) -> None:
        """Let the workers delete the jobs of finished executions (WAL of this run too)."""
        deadline = time.monotonic() + 30
        while self.one("SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')"):
            if time.monotonic() > deadline:
                raise BenchError("procrastinate jobs left unfinished after their executions")
            time.sleep(0.05)

    def sessions(self) -> int:
        """PostgreSQL sessions opened on this database so far."""
        return int(
            self.one("SELECT sessions FROM pg_stat_database WHERE datname = current_database()")
        )

    def measure(self, flow: Installed, runs: int, *, executed: bool, clients: int = 0) -> Sample:
        """Submit `runs` runs; with `executed`, until the last ends, else until accepted."""
        size, lsn, sessions, cpu = self.table_size(), self.lsns(), self.sessions(), self.cpu()
        started = time.time()
        asyncio.run(self.submit(flow, runs, clients or self.clients))
        ended = time.time()
        if executed:
            ended = self.wait_ended(int(started * 1000), runs) / 1000
            self.wait_jobs_done()
        self.vacuum()
        spent = self.cpu().since(cpu)
        mine, cluster = self.wal_between(lsn, self.lsns())
        if not executed:
            time.sleep(1.1)  # backends report the sessions they opened within a second
        return Sample(
            rate=runs / (ended - started),
            table_bytes=(self.table_size() - size) / runs,
            wal_bytes=mine / runs,
            cluster_wal_bytes=cluster / runs,
            sessions=100 * (self.sessions() - sessions) / runs,
            **per_run(spent, runs),
        )

    def drain(self, workers: int, since_ms: int, runs: int) -> Sample:
        """Start `workers` workers on a backlog of `runs` runs queued since `since_ms`.

        The rate is taken between the 10th and the 90th percentile of the executions' ends,
        which leaves out the workers' staggered starts and the last stragglers.
        """
        assert self.db is not None
        size, lsn, cpu = self.table_size(), self.lsns(), self.cpu()
        self.start_workers(workers)
        self.wait_ended(since_ms, runs)
        self.wait_jobs_done()
        self.vacuum()
        spent = self.cpu().since(cpu)
        mine, cluster = self.wal_between(lsn, self.lsns())
        ends = [
            row[0]
            for row in self.db.execute(
                "SELECT stopped_at FROM executions WHERE started_at >= %s ORDER BY stopped_at",
                [since_ms],
            )
        ]
        first, last = ends[len(ends) // 10], ends[len(ends) * 9 // 10]
        sample = Sample(
            rate=(len(ends) * 8 // 10) / max((last - first) / 1000, 0.001),
            table_bytes=(self.table_size() - size) / runs,
            wal_bytes=mine / runs,
            cluster_wal_bytes=cluster / runs,
            **per_run(spent, runs),
        )
        self.stop_workers()
        return sample

    def describe_server(self) -> str:
        settings = ", ".join(
            f"{name} {self.one(f'SHOW {name}')}"
            for name in ("autovacuum", "synchronous_commit", "shared_buffers", "max_wal_size")
        )
        return f"PostgreSQL {self.one('SHOW server_version')}: {settings}"

    def vacuum(self) -> None:
        """What autovacuum would do after a run: every measurement includes its cost.

        (Autovacuum may be off on a test server, and the queue tables then bloat until
        each job fetch wades through thousands of dead rows.)"""
        assert self.db is not None
        self.db.execute("VACUUM executions, steps, procrastinate_jobs, procrastinate_events")

    def purge(self) -> Sample:
        """Purge every ended execution with Solder's own retention sweep: a worker whose
        retention is about a second purges them all as it starts."""
        assert self.db is not None
        ended = int(self.one("SELECT count(*) FROM executions WHERE stopped_at IS NOT NULL"))
        size, lsn, cpu = self.table_size(), self.lsns(), self.cpu()
        started = time.monotonic()
        self.start_workers(1, SOLDER_LOG_RETENTION_DAYS="0.00001")
        deadline = started + RUN_TIMEOUT
        while self.one("SELECT count(*) FROM executions WHERE stopped_at IS NOT NULL"):
            if time.monotonic() > deadline:
                raise BenchError("the retention sweep did not purge the ended executions")
            time.sleep(0.1)
        elapsed = time.monotonic() - started
        self.vacuum()
        spent = self.cpu().since(cpu)
        mine, cluster = self.wal_between(lsn, self.lsns())
        self.stop_workers()
        return Sample(
            rate=ended / elapsed,
            table_bytes=(self.table_size() - size) / ended,
            wal_bytes=mine / ended,
            cluster_wal_bytes=cluster / ended,
            **per_run(spent, ended),
        )

    def compact(self) -> float:
        """Bytes per execution once the table holds no dead rows (VACUUM FULL)."""
        assert self.db is not None
        self.db.execute("VACUUM FULL executions")
        count = int(self.one("SELECT count(*) FROM executions"))
        return self.table_size() / count

    def stored_log_bytes(self, flow: Installed) -> float:
        return float(
            self.one(
                "SELECT avg(pg_column_size(log)) FROM executions WHERE workflow_number ="
                " (SELECT number FROM workflow_numbers WHERE workflow_id = %s)",
                [flow.workflow_id],
            )
        )

    def problems_in_logs(self) -> list[str]:
        found = []
        for path in sorted(self.workdir.glob("*.log")):
            text = path.read_text(errors="replace")
            for marker in ("Traceback", "ERROR", "crashed with its worker", "had no job"):
                if marker in text:
                    found.append(f"{path.name} contains {marker!r}")
        return found


@dataclass
class Plan:
    repeats: int
    runs: int
    backlog: int
    clients: int
    concurrency: int
    warmup: int = 50
    few_clients: int = 4  # fewer than the API's 5 pooled connections

    def steps(self) -> int:
        # setup, warm-up, end to end (2 x 2 x repeats), compaction, backlogs (2 x 2 x repeats),
        # purge, API alone with few clients (repeats)
        return 4 + 9 * self.repeats


def run(bench: Bench, plan: Plan) -> Results:
    results = Results()
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("setting up", total=plan.steps())

        def done(key: str, sample: Sample, unit: str) -> None:
            results.add(key, sample)
            progress.console.print(
                f"  {key}: {sample.rate:,.0f} {unit}, {sample.wal_bytes:,.0f} B WAL each"
            )
            progress.advance(task)

        transform, http = bench.setup()
        results.server = bench.describe_server()
        bench.start_workers(1)
        progress.advance(task)

        progress.update(task, description="warming up")
        for flow in (transform, http):
            bench.measure(flow, plan.warmup, executed=True)
        progress.advance(task)

        # End to end: the API takes runs while the workers run them.
        for workers in (1, 2):
            if workers == 2:
                bench.start_workers(1)
            for flow in (transform, http):
                for n in range(plan.repeats):
                    progress.update(
                        task, description=f"end to end, {flow.label}, {workers} worker(s), #{n + 1}"
                    )
                    bench.observe_load(results)
                    sample = bench.measure(flow, plan.runs, executed=True)
                    done(f"e2e/{flow.label}/{workers}", sample, "executions/s")

        progress.update(task, description="stopping the workers; VACUUM FULL executions")
        bench.stop_workers()
        results.compacted_bytes = bench.compact()
        results.log_bytes = {flow.label: bench.stored_log_bytes(flow) for flow in (transform, http)}
        progress.advance(task)

        # The API alone queues a backlog; then workers alone run it.
        for workers in (1, 2):
            for n in range(plan.repeats):
                progress.update(task, description=f"API alone, then {workers} worker(s), #{n + 1}")
                bench.observe_load(results)
                since = int(time.time() * 1000)
                done("api", bench.measure(transform, plan.backlog, executed=False), "runs/s")
                bench.observe_load(results)
                done(f"drain/{workers}", bench.drain(workers, since, plan.backlog), "executions/s")

        progress.update(task, description="purging every ended execution (retention)")
        done("purge", bench.purge(), "executions purged/s")

        for n in range(plan.repeats):
            progress.update(task, description=f"API alone, {plan.few_clients} clients, #{n + 1}")
            bench.observe_load(results)
            sample = bench.measure(
                transform, plan.backlog, executed=False, clients=plan.few_clients
            )
            done("api/few", sample, "runs/s")
    results.warnings = bench.warnings + bench.problems_in_logs()
    return results


def number(value: float) -> str:
    """Whole numbers, but a decimal below 10 (a 0.4 ms cost is not 0)."""
    return f"{value:,.1f}" if abs(value) < 10 else f"{value:,.0f}"


def report(results: Results, plan: Plan) -> None:
    table = Table(title=f"Solder scale-out on PostgreSQL (medians of {plan.repeats} or more)")
    table.add_column("measurement")
    table.add_column("median", justify="right")
    table.add_column("unit")
    table.add_column("each measurement", style="dim")

    def row(label: str, keys: list[str], figure: str, unit: str, scale: float = 1) -> None:
        values = [
            scale * getattr(sample, figure) for key in keys for sample in results.samples[key]
        ]
        each = ", ".join(number(value) for value in values)
        table.add_row(label, number(statistics.median(values)), unit, each)

    flows = (("transform", "transform"), ("http + transform", "http"))
    api = f"API alone, {plan.clients} clients"
    few = f"API alone, {plan.few_clients} clients"
    row(f"{api}: runs accepted", ["api"], "rate", "runs/s")
    row(f"{few}: runs accepted", ["api/few"], "rate", "runs/s")
    for label, key in flows:
        for workers in (1, 2):
            row(
                f"{label}, {workers} worker(s), end to end",
                [f"e2e/{key}/{workers}"],
                "rate",
                "exec/s",
            )
    for workers in (1, 2):
        row(f"transform backlog, {workers} worker(s) alone", [f"drain/{workers}"], "rate", "exec/s")
    row("retention purge, one sweep (worker start included)", ["purge"], "rate", "exec/s")

    table.add_section()
    for label, key in flows:
        keys = [f"e2e/{key}/1", f"e2e/{key}/2"]
        row(f"{label}: executions table growth", keys, "table_bytes", "B/exec")
        row(f"{label}: WAL, this database", keys, "wal_bytes", "B/exec")
        row(f"{label}: WAL, whole cluster", keys, "cluster_wal_bytes", "B/exec")
    row("transform: WAL of accepting (API alone)", ["api", "api/few"], "wal_bytes", "B/exec")
    row("transform: WAL of running (workers alone)", ["drain/1", "drain/2"], "wal_bytes", "B/exec")
    row("transform: table growth, API alone", ["api", "api/few"], "table_bytes", "B/exec")
    row("retention purge of every ended execution: WAL", ["purge"], "wal_bytes", "B/exec")
    compacted = f"{results.compacted_bytes:,.0f}"
    table.add_row("executions table after VACUUM FULL (both)", compacted, "B/exec", "")
    for label, size in results.log_bytes.items():
        table.add_row(f"{label}: stored log document (compressed)", f"{size:,.0f}", "B/exec", "")

    table.add_section()
    for label, key in flows:
        keys = [f"e2e/{key}/1", f"e2e/{key}/2"]
        row(f"{label}: CPU, API process", keys, "api_ms", "ms/exec")
        row(f"{label}: CPU, worker processes", keys, "worker_ms", "ms/exec")
        row(f"{label}: CPU, PostgreSQL server", keys, "postgres_ms", "ms/exec")
    row(f"{api}: CPU, API process", ["api"], "api_ms", "ms/run")
    row(f"{few}: CPU, API process", ["api/few"], "api_ms", "ms/run")
    row(f"{api}: CPU, PostgreSQL server", ["api"], "postgres_ms", "ms/run")
    row(f"{few}: CPU, PostgreSQL server", ["api/few"], "postgres_ms", "ms/run")
    alone = ["drain/1", "drain/2"]
    row("transform backlog, workers alone: CPU, PostgreSQL", alone, "postgres_ms", "ms/exec")
    row("retention purge: CPU, PostgreSQL server", ["purge"], "postgres_ms", "ms/exec")

    table.add_section()
    row(f"{api}: PostgreSQL sessions opened", ["api"], "sessions", "per 100 runs")
    row(f"{few}: PostgreSQL sessions opened", ["api/few"], "sessions", "per 100 runs")
    row("other processes' CPU meanwhile", list(results.samples), "others", "% of a core", 100)
    console.print(table)
    console.print(
        f"End to end: {plan.runs} runs a measurement, {plan.clients} HTTP clients; backlogs of "
        f"{plan.backlog} runs; worker concurrency {plan.concurrency}. CPU figures are this "
        "machine's; PostgreSQL's counts the whole server."
    )
    console.print(f"{results.server}. Each measurement includes a VACUUM of the tables it dirtied.")
    console.print(
        f"1-minute load average during the runs: {min(results.load):.2f} to "
        f"{max(results.load):.2f} on {os.cpu_count()} CPUs; at most "
        f"{results.other_sessions} client sessions on other databases of the server."
    )
    for warning in results.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}")


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--upstream":
        serve_upstream(int(sys.argv[2]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("SOLDER_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432"),
        help="server to benchmark on; its user must be allowed to create databases",
    )
    parser.add_argument("--repeats", type=int, default=3, help="measurements of each figure")
    parser.add_argument("--runs", type=int, default=200, help="runs per end-to-end measurement")
    parser.add_argument(
        "--backlog", type=int, default=300, help="runs the API alone queues, then workers run"
    )
    parser.add_argument("--clients", type=int, default=16, help="concurrent HTTP clients")
    parser.add_argument("--concurrency", type=int, default=8, help="each worker's concurrency")
    options = parser.parse_args()
    plan = Plan(
        options.repeats, options.runs, options.backlog, options.clients, options.concurrency
    )
    with tempfile.TemporaryDirectory(prefix="solder-bench-") as workdir:
        bench = Bench(options.postgres_url, Path(workdir), options.clients, options.concurrency)
        try:
            results = run(bench, plan)
        except psycopg.OperationalError as exc:
            console.print(f"[red]PostgreSQL at {options.postgres_url} is unreachable:[/red] {exc}")
            return 1
        except BenchError as exc:
            console.print(f"[red]Solder misbehaved:[/red] {exc}")
            for process in bench.processes:
                console.print(f"--- {process.log.name} (last lines)\n{process.tail()}")
            return 1
        finally:
            bench.stop_all()
            with contextlib.suppress(psycopg.Error):
                bench.drop_database()
    report(results, plan)
    return 0


if __name__ == "__main__":
    sys.exit(main())
