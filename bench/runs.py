"""Scenarios 2 (runs) and 6 (memory): workflows run under load, and the server's RSS.

The workflow: a webhook trigger, a `transform` block (`{{ trigger.n + 1 }}`), then an
`http` block GETting `/echo?n=...` from a loopback upstream that the bench starts in its
own process (scale_out.py's, on uvloop and httptools: some 25 µs of CPU a request, so
that the machine's two cores go to Solder); every step is durably logged, as always.
Solder runs as in production (common.solder_stack): `solder serve` on SQLite; `solder
serve --no-worker` plus `--workers` `solder worker` processes on PostgreSQL. The load
comes from loadgen.py, a separate process (its CPU use is reported: it is no
bottleneck).

Each run, after a warm-up:

1. Maximum rate: 32 clients in a closed loop POST /run/workflow for `--run-seconds`.
   Figure: the executions whose status is `succeeded` and whose `stopped_at` lies
   within the load's window (from the load generator's start to its end), divided by
   the window's length; read from the executions table once the backlog has drained
   (how long that took is reported, and the rate of all the runs accepted over the
   window and the drain together: a server that accepts faster than it runs finishes
   few within the window). Runs accepted per second, and the server's CPU
   (cores: all its processes' CPU seconds over the window), are reported beside it.
2. Latency: an open-loop load at a fixed rate, 70 % of the median maximum rate (or of
   1,000/s, the target, if the maximum is higher), for `--run-seconds`. Figure: p99 of
   each execution's `stopped_at` (executions table) minus the time its request was
   scheduled to be sent (client clock; same machine, same wall clock). With
   SOLDER_BENCH_OPEN_RATE set, at that rate instead: two versions of the code compared at
   the same load.

Memory (scenario 6): VmRSS of each server process, sampled every second during the
closed-loop loads. Figures: the peak, and the growth from the sample after the first
10 s (half the run if shorter) to the last sample, also per minute. The issue's "no
growth over 10 minutes" needs `--run-seconds 600`.

Each figure is the median over `--runs` runs. On PostgreSQL each run ends with a VACUUM
ANALYZE, not timed, as autovacuum would do (it is off on the test server).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from common import ANALYZES, Stack, percentile, rss_bytes, solder_stack
from logs_read import meets, progress
from scale_out import BenchError, machine_busy_seconds

CLIENTS = 32
WARM_UP_SECONDS = 3.0
TARGET_RATE = 1_000.0  # completed executions/s
LATENCY_LOAD = 0.7
MAX_P99_MS = 100.0
# The open loop's p99 is also taken per window of this many seconds, to place a tail in time.
TAIL_WINDOW_SECONDS = 10.0
MAX_RSS_MB = 150.0
SETTLE_SECONDS = 10.0
GROWTH_TOLERANCE_MB = 5.0  # what counts as "no growth" over a run
MB = 1024 * 1024
LOADGEN = Path(__file__).with_name("loadgen.py")

Row = tuple[str, str, str, str, str, str]  # scenario, figure, value, target, met, bare stack


def workflow(upstream_url: str) -> dict[str, Any]:
    return {
        "name": "Bench runs",
        "trigger": {"type": "webhook"},
        "blocks": [
            {
                "name": "prepare",
                "connector": "transform",
                "config": {"expression": "{{ trigger.n + 1 }}"},
            },
            {
                "name": "call",
                "connector": "http",
                "config": {"url": f"{upstream_url}/echo", "query": {"n": "{{ blocks.prepare }}"}},
            },
        ],
    }


@dataclass
class Window:
    """One closed-loop run."""

    seconds: float
    completed: int
    accepted: int
    server_cores: float
    client_cores: float
    drain: float
    memory: dict[str, list[tuple[float, int]]]  # process: (s since the start, RSS bytes)
    # The whole machine's cores busy on average over the window (every process's CPU, the
    # load generator's and the database's included; /proc/stat): 2.0 is all of both.
    machine_cores: float = 0.0

    @property
    def rate(self) -> float:
        return self.completed / self.seconds


@dataclass
class Latency:
    """One open-loop run."""

    rate: float
    executions: int
    p50: float
    p99: float
    client_cores: float
    late: int  # requests sent more than 10 ms after their scheduled time
    # The slowest windows of TAIL_WINDOW_SECONDS: (start in seconds into the load, p99 ms).
    slowest: list[tuple[float, float]]
    worst: float = 0.0  # the slowest run, ms
    over_500: int = 0  # runs that took more than 500 ms from request to finished
    # Where the time went, (p50, p99) ms: from the request's scheduled time to its sending
    # (the load generator's own delay), to its answer (that and the accept), and from the
    # answer to the run's end (the wait for a worker, the run).
    sent: tuple[float, float] = (0.0, 0.0)
    answered: tuple[float, float] = (0.0, 0.0)
    ran: tuple[float, float] = (0.0, 0.0)
    machine_cores: float = 0.0  # as in Window
    # The share of the slowest 1 % of runs scheduled during the benchmark's ANALYZE of
    # `executions` or just after it (`during_analyze`); None if none ran.
    during_analyze: float | None = None


# How long after the benchmark's ANALYZE of `executions` ends a run scheduled then still
# counts as met by it: the backlog it left takes about as long to drain (bench/RESULTS.md,
# "The job fetch planned at every call").
ANALYZE_SHADOW_MS = 600.0


def during_analyze(
    runs: list[tuple[float, float]], analyzes: list[tuple[float, float]]
) -> float | None:
    """The share of the slowest 1 % of `runs` ((scheduled, latency), ms) scheduled while
    one of `analyzes` ((start, end), ms since the epoch) ran or in the ANALYZE_SHADOW_MS
    after it; None without any ANALYZE."""
    if not analyzes or not runs:
        return None
    slowest = sorted(runs, key=lambda run: -run[1])[: max(1, len(runs) // 100)]
    met = sum(
        1
        for at, _ in slowest
        if any(start <= at <= end + ANALYZE_SHADOW_MS for start, end in analyzes)
    )
    return met / len(slowest)


@dataclass
class Measured:
    backend: str
    workers: int
    processes: int = 1  # solder serve --processes (SQLite)
    windows: list[Window] = field(default_factory=list)
    latencies: list[Latency] = field(default_factory=list)

    def max_rate(self) -> float:
        return statistics.median(window.rate for window in self.windows)

    @property
    def label(self) -> str:
        """The backend, and the processes serving it when more than one."""
        return f"{self.backend}, {self.processes} processes" if self.processes > 1 else self.backend


class Bench:
    def __init__(self, stack: Stack, workdir: Path) -> None:
        self.stack, self.workdir = stack, workdir
        user, flow = stack.install("bench-runs", workflow(stack.upstream_url))
        self.spec: dict[str, Any] = {
            "url": stack.base,
            "key": stack.headers["Authorization"].split()[1],
            "userId": user,
            "workflowId": flow,
        }

    def load(self, seconds: float, **mode: float) -> tuple[dict[str, Any], Window]:
        """Run the load generator; its output, and what the server did meanwhile."""
        spec, out = self.workdir / "load.json", self.workdir / "load.out"
        spec.write_bytes(orjson.dumps({**self.spec, "seconds": seconds, **mode}))
        pids = self.stack.server_pids()
        memory: dict[str, list[tuple[float, int]]] = {name: [] for name in pids}
        cpu, busy, started = self.stack.server_cpu(), machine_busy_seconds(), time.monotonic()
        generator = subprocess.Popen([sys.executable, str(LOADGEN), str(spec), str(out)])
        while True:
            for name, pid in pids.items():
                memory[name].append((time.monotonic() - started, rss_bytes(pid)))
            try:
                generator.wait(timeout=1.0)
                break
            except subprocess.TimeoutExpired:
                if time.monotonic() - started > seconds + 120:
                    generator.kill()
                    raise BenchError("the load generator did not end") from None
        cpu, busy = self.stack.server_cpu() - cpu, machine_busy_seconds() - busy
        if generator.returncode != 0:
            raise BenchError(f"the load generator failed (exit code {generator.returncode})")
        result: dict[str, Any] = orjson.loads(out.read_bytes())
        refused = [record for record in result["records"] if record[3] != 200]
        if result["errors"] or refused:
            raise BenchError(
                f"{len(refused)} runs refused or lost during the load: {result['errors'][:5]}"
            )
        window = (result["ended"] - result["started"]) / 1000
        run = Window(
            window,
            0,
            len(result["records"]),
            cpu / window,
            result["cpu"] / window,
            0.0,
            memory,
            busy / (time.monotonic() - started),
        )
        return result, run

    def closed(self, seconds: float) -> Window:
        result, window = self.load(seconds, clients=CLIENTS)
        window.drain = self.stack.wait_idle(result["started"])
        self.stack.vacuum()
        window.completed = self.stack.query(
            "SELECT count(*) FROM executions WHERE status = 'succeeded'"
            " AND stopped_at >= ? AND stopped_at <= ?",
            [int(result["started"]), int(result["ended"])],
        )[0][0]
        return window

    def open(self, rate: float, seconds: float) -> Latency:
        result, window = self.load(seconds, rate=rate)
        if len(result["records"]) != result["scheduled"]:
            raise BenchError(
                f"the load generator sent {len(result['records']):,} of the "
                f"{result['scheduled']:,} runs scheduled"
            )
        self.stack.wait_idle(result["started"])
        self.stack.vacuum()
        stopped = dict(
            self.stack.query(
                "SELECT id, stopped_at FROM executions WHERE started_at >= ?",
                [int(result["started"]) - 1],
            )
        )
        latencies, sends, accepts, runs = [], [], [], []
        by_window: dict[int, list[float]] = {}
        for scheduled, sent, answered, _status, execution in result["records"]:
            if execution not in stopped:
                raise BenchError(f"execution {execution} was accepted but is not recorded")
            latencies.append(stopped[execution] - scheduled)
            sends.append(sent - scheduled)
            accepts.append(answered - scheduled)
            runs.append(stopped[execution] - answered)
            at = int((scheduled - result["started"]) / 1000 // TAIL_WINDOW_SECONDS)
            by_window.setdefault(at, []).append(latencies[-1])
        late = sum(1 for record in result["records"] if record[1] - record[0] > 10)
        tails = sorted(
            (
                (at * TAIL_WINDOW_SECONDS, percentile(values, 0.99))
                for at, values in by_window.items()
            ),
            key=lambda window: -window[1],
        )
        return Latency(
            len(latencies) / window.seconds,
            len(latencies),
            percentile(latencies, 0.5),
            percentile(latencies, 0.99),
            window.client_cores,
            late,
            tails[:3],
            max(latencies),
            sum(1 for latency in latencies if latency > 500),
            (percentile(sends, 0.5), percentile(sends, 0.99)),
            (percentile(accepts, 0.5), percentile(accepts, 0.99)),
            (percentile(runs, 0.5), percentile(runs, 0.99)),
            window.machine_cores,
            during_analyze(
                [
                    (record[0], latency)
                    for record, latency in zip(result["records"], latencies, strict=True)
                ],
                list(ANALYZES),
            ),
        )


def measure(
    backend: str,
    postgres_url: str | None,
    *,
    runs: int,
    seconds: float,
    workers: int,
    processes: int = 1,
) -> Measured:
    """`processes` > 1 (SQLite): `solder serve --processes N`."""
    measured = Measured(backend, 0 if backend == "SQLite" else workers, processes)
    settings = {"SOLDER_PROCESSES": str(processes)}
    with (
        tempfile.TemporaryDirectory(prefix="solder-bench-runs-") as workdir,
        solder_stack(
            backend, postgres_url, Path(workdir), workers=workers, upstream=True, settings=settings
        ) as stack,
        progress() as bar,
    ):
        bench = Bench(stack, Path(workdir))
        task = bar.add_task(f"{measured.label}: runs, warming up", total=1 + 2 * runs)
        bench.closed(WARM_UP_SECONDS)
        bar.advance(task)
        for n in range(runs):
            bar.update(task, description=f"{measured.label}: runs, {CLIENTS} clients, #{n + 1}")
            measured.windows.append(bench.closed(seconds))
            bar.advance(task)
        # SOLDER_BENCH_OPEN_RATE: the open loop at that rate instead, to compare two
        # versions of the code at the same load.
        fixed = os.environ.get("SOLDER_BENCH_OPEN_RATE")
        rate = float(fixed) if fixed else LATENCY_LOAD * min(measured.max_rate(), TARGET_RATE)
        for n in range(runs):
            bar.update(
                task, description=f"{measured.label}: runs, open loop at {rate:,.0f}/s, #{n + 1}"
            )
            measured.latencies.append(bench.open(rate, seconds))
            bar.advance(task)
    return measured


def run(
    postgres_url: str | None, *, runs: int, seconds: float, workers: int, processes: int = 1
) -> Iterator[Measured]:
    """Measure on SQLite (with one process, then with `processes` if more), then on
    PostgreSQL when `postgres_url` is given."""
    yield measure("SQLite", None, runs=runs, seconds=seconds, workers=workers)
    if processes > 1:
        yield measure(
            "SQLite", None, runs=runs, seconds=seconds, workers=workers, processes=processes
        )
    if postgres_url:
        yield measure("PostgreSQL", postgres_url, runs=runs, seconds=seconds, workers=workers)


def median(values: Iterator[float] | list[float]) -> float:
    return statistics.median(list(values))


def busy_share(cores: float) -> str:
    """The machine's busy cores as a share of all of them: where a tail comes from the
    cores (near 100 %) rather than from Solder's waits."""
    return f"{cores / (os.cpu_count() or 1):.0%}"


def figures(measured: Measured, ceiling: float | None) -> list[Row]:
    """Table rows of scenarios 2 and 6; `ceiling`: scenario 7's executions/s, if known."""
    windows, latencies = measured.windows, measured.latencies
    rate = measured.max_rate()
    seconds = median(w.seconds for w in windows)
    each = ", ".join(f"{w.rate:,.0f}" for w in windows)
    value = (
        f"{rate:,.0f} exec/s (each run: {each}); accepted "
        f"{median(w.accepted / w.seconds for w in windows):,.0f} runs/s; server "
        f"{median(w.server_cores for w in windows):.2f} cores; backlog drained in "
        f"{median(w.drain for w in windows):.0f} s, so all accepted runs ended at "
        f"{median(w.accepted / (w.seconds + w.drain) for w in windows):,.0f} exec/s; "
        "load generator "
        f"{median(w.client_cores for w in windows):.2f} cores; the machine "
        f"{busy_share(median(w.machine_cores for w in windows))} busy"
    )
    who = "solder serve" if not measured.workers else f"API + {measured.workers} workers"
    if measured.processes > 1:
        who = f"solder serve --processes {measured.processes}"
    bare = f"insert ceiling {ceiling:,.0f} exec/s (7.)" if ceiling else ""
    rows: list[Row] = [
        (
            "2. runs",
            f"completed executions/s, {CLIENTS} clients, {seconds:.0f} s ({who})",
            value,
            f"≥ {TARGET_RATE:,.0f} exec/s",
            meets(rate >= TARGET_RATE, rate / TARGET_RATE),
            bare,
        )
    ]
    p99 = median(lat.p99 for lat in latencies)
    asked = median(lat.rate for lat in latencies)
    at = "70 % of 1,000/s" if rate >= TARGET_RATE else f"70 % of the measured max {rate:,.0f}/s"
    if os.environ.get("SOLDER_BENCH_OPEN_RATE"):
        at = "SOLDER_BENCH_OPEN_RATE"
    rows.append(
        (
            "2. runs",
            f"p99 request -> finished, open loop at {asked:,.0f}/s ({at})",
            f"p99 {p99:,.0f} ms (each run: {', '.join(f'{x.p99:,.0f}' for x in latencies)}); "
            f"p50 {median(lat.p50 for lat in latencies):,.0f} ms; "
            f"{median(lat.executions for lat in latencies):,.0f} executions a run, "
            f"{median(lat.late for lat in latencies):,.0f} sent > 10 ms late; "
            f"load generator {median(lat.client_cores for lat in latencies):.2f} cores; "
            f"the machine {busy_share(median(lat.machine_cores for lat in latencies))} busy; "
            f"slowest {TAIL_WINDOW_SECONDS:g} s windows (start: p99): "
            + "; ".join(
                ", ".join(f"{at:.0f} s: {tail:,.0f} ms" for at, tail in lat.slowest)
                for lat in latencies
            )
            + analyze_share(latencies),
            f"p99 ≤ {MAX_P99_MS:g} ms at 700/s",
            meets(p99 <= MAX_P99_MS, MAX_P99_MS / p99)
            + ("" if rate >= TARGET_RATE else " (at a lower rate)"),
            "",
        )
    )
    return rows + memory_figures(windows)


def analyze_share(latencies: list[Latency]) -> str:
    """What of the open loops' tails the benchmark's ANALYZE of `executions` met, if it
    ran (PostgreSQL with autovacuum off)."""
    shares = [lat.during_analyze for lat in latencies if lat.during_analyze is not None]
    if not shares:
        return ""
    each = ", ".join(f"{share:.0%}" for share in shares)
    return (
        f"; of the slowest 1 % of runs, {each} scheduled during the benchmark's ANALYZE"
        f" of executions or in the {ANALYZE_SHADOW_MS / 1000:g} s after it"
    )


def memory_figures(windows: list[Window]) -> list[Row]:
    rows: list[Row] = []
    for name in windows[0].memory:
        peaks, growths, per_minute = [], [], []
        for window in windows:
            samples = window.memory[name]
            settle = min(SETTLE_SECONDS, samples[-1][0] / 2)
            since, first = next((t, rss) for t, rss in samples if t >= settle)
            until, last = samples[-1]
            peaks.append(max(rss for _t, rss in samples) / MB)
            growths.append((last - first) / MB)
            per_minute.append((last - first) / MB / max(until - since, 1) * 60)
        peak, growth = median(peaks), median(growths)
        length = median(w.seconds for w in windows)
        rows.append(
            (
                "6. memory",
                f"peak RSS, {name}",
                f"{peak:,.0f} MB (each run: {', '.join(f'{p:,.0f}' for p in peaks)})",
                f"≤ {MAX_RSS_MB:g} MB",
                meets(peak <= MAX_RSS_MB, MAX_RSS_MB / peak),
                "",
            )
        )
        grew = growth <= GROWTH_TOLERANCE_MB
        rows.append(
            (
                "6. memory",
                f"RSS growth, {name}, from {settle:.0f} s to the end of {length:.0f} s",
                f"{growth:+,.1f} MB ({median(per_minute):+,.1f} MB/min; each run: "
                f"{', '.join(f'{g:+,.1f}' for g in growths)})",
                f"none over 10 min (≤ {GROWTH_TOLERANCE_MB:g} MB)",
                ("yes" if grew else "no")
                + ("" if length >= 600 else f" over {length:.0f} s; 10 min: --run-seconds 600"),
                "",
            )
        )
    return rows
