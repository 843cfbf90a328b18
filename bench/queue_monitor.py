"""Watch PostgreSQL's queue while a benchmark runs: what the workers were doing when runs
waited.

    .venv/bin/python bench/queue_monitor.py record OUT.jsonl [--every 0.5]
        [--postgres-url postgresql://postgres@127.0.0.1:5432]
    .venv/bin/python bench/queue_monitor.py report OUT.jsonl [--above 150]

`record` samples, every `--every` seconds until interrupted, each benchmark database
(`solder_bench_*`, made and dropped by bench/common.py): procrastinate's jobs by status,
the unfinished executions by status, and the backends running a statement (their wait
event, how long the statement has run, its start). `report` prints the longest queue of
each 10 s, then one line per sample from the ones before the queue first passes
`--above` jobs waiting to the ones after it falls back: when, the jobs waiting and being
run, and the statements on the CPU for more than 10 ms. Found the fetch planned from
stale statistics (bench/RESULTS.md, scenario 2, 2026-12-05); a probe for RESULTS.md,
not part of `make bench`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from pathlib import Path
from typing import Any

import orjson
import psycopg

_DATABASES = "SELECT datname FROM pg_database WHERE datname LIKE 'solder_bench%'"
_ACTIVE = (
    "SELECT pid, state, wait_event_type, wait_event,"
    " extract(epoch FROM clock_timestamp() - query_start)::float8, left(query, 80)"
    " FROM pg_stat_activity WHERE datname = %s AND state <> 'idle' AND pid <> pg_backend_pid()"
)
_JOBS = "SELECT status::text, count(*) FROM procrastinate_jobs GROUP BY 1"
_UNFINISHED = (
    "SELECT status, count(*) FROM executions"
    " WHERE status IN ('queued', 'running', 'crashed') GROUP BY 1"
)


def sample(admin: psycopg.Connection[Any], base_url: str) -> list[dict[str, Any]]:
    samples = []
    for (name,) in admin.execute(_DATABASES).fetchall():
        record: dict[str, Any] = {"t": time.time(), "database": name}
        try:
            with psycopg.connect(f"{base_url}/{name}", autocommit=True, connect_timeout=2) as db:
                record["jobs"] = dict(db.execute(_JOBS).fetchall())
                record["executions"] = dict(db.execute(_UNFINISHED).fetchall())
        except psycopg.Error as exc:  # the database dropped meanwhile, or not migrated yet
            record["error"] = str(exc).strip()[:200]
        record["active"] = admin.execute(_ACTIVE, [name]).fetchall()
        samples.append(record)
    return samples


def record(out: Path, base_url: str, every: float) -> None:
    with (
        psycopg.connect(f"{base_url}/postgres", autocommit=True) as admin,
        out.open("ab") as sink,
    ):
        while True:
            started = time.monotonic()
            for found in sample(admin, base_url):
                sink.write(orjson.dumps(found) + b"\n")
            sink.flush()
            time.sleep(max(0.0, every - (time.monotonic() - started)))


def report(path: Path, above: int) -> None:
    samples = [orjson.loads(line) for line in path.read_bytes().splitlines() if line]
    waiting = [sample.get("jobs", {}).get("todo", 0) for sample in samples]
    shown = {
        near
        for at, count in enumerate(waiting)
        if count > above
        for near in range(max(0, at - 4), min(len(samples), at + 5))
    }
    longest: dict[int, int] = {}  # the longest queue of each 10 s since the first sample
    for sample, count in zip(samples, waiting, strict=True):
        at = int(sample["t"] - samples[0]["t"]) // 10 * 10
        longest[at] = max(longest.get(at, 0), count)
    print("longest queue a 10 s (s since the start: jobs):")
    print(" ".join(f"{at}:{count}" for at, count in sorted(longest.items())))
    if not shown:
        print(f"the queue never passed {above} jobs waiting ({len(samples)} samples)")
        return
    for at in sorted(shown):
        sample = samples[at]
        slow = [
            f"{row[5][:40]!r} {row[4] * 1000:.0f} ms"
            for row in sample["active"]
            if row[2] is None and row[4] is not None and row[4] > 0.01
        ]
        jobs = sample.get("jobs", {})
        print(
            time.strftime("%H:%M:%S", time.gmtime(sample["t"])),
            f"waiting {jobs.get('todo', 0):>5}  running {jobs.get('doing', 0):>3}",
            "; ".join(slow),
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    recording = commands.add_parser("record")
    recording.add_argument("out", type=Path)
    recording.add_argument("--every", type=float, default=0.5)
    recording.add_argument(
        "--postgres-url",
        default=os.environ.get("SOLDER_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432"),
    )
    reporting = commands.add_parser("report")
    reporting.add_argument("path", type=Path)
    reporting.add_argument("--above", type=int, default=150)
    options = parser.parse_args()
    if options.command == "record":
        with contextlib.suppress(KeyboardInterrupt):
            record(options.out, options.postgres_url.rstrip("/"), options.every)
    else:
        report(options.path, options.above)


if __name__ == "__main__":
    main()
