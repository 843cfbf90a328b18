"""Scenario 4, storage: bytes on disk per seed-shaped execution, indexes included.

The store is the logs-read data set (logs_dataset.py), as a server's is once its
compaction sweep has run: every log written with the tenant's trained dictionary, the
rows as the engine's end of an execution writes them (the trigger left to the log, the
workflow and the user as their numbers). Beside it, the same store with no dictionary:
the logs compressed with the built-in skeleton only, as before dictionaries (and as a
tenant's logs are before it has one).

SQLite: `page_count * page_size` over the executions (the whole file), and each table
and index (`dbstat`). PostgreSQL: `pg_total_relation_size('executions')` (heap, TOAST,
indexes) over the executions, and each part, after the data set (COPY, then VACUUM
ANALYZE) and after VACUUM FULL (every page rewritten, indexes rebuilt).

Then the choice of a dictionary's scope (`scope`): seed-shaped logs of tenants with 1, 20
and 1,000 workflows, each workflow with its own block ids, stored with one dictionary
per tenant or one per workflow.
"""

from __future__ import annotations

import random
import sqlite3
import statistics
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from common import elapsed, postgres_database
from logs_dataset import (
    FIRST_SECOND,
    Dataset,
    execution_id,
    generate_postgres,
    generate_sqlite,
    log_template,
    new_log,
    user_id,
)
from logs_dataset import VERSION as DATASET_VERSION
from logs_read import DATA_DIR, progress
from logs_read import sqlite_dataset as cached_logs_store

from solder import compaction
from solder.store import codec
from solder.training import train

TARGET = 400  # bytes per execution, the issue's
N8N = "n8n about 3,600 B"  # the reference
DATABASE = "solder_bench_storage"
# The parts of the executions table, by their names in dbstat and in PostgreSQL.
PARTS = {
    "executions": "executions table",
    "ix_executions_user_logs": "ix_executions_user_logs",
    "sqlite_autoindex_executions_1": "primary key (id)",
    "pk_executions": "primary key (id)",
    "ix_executions_pending": "ix_executions_pending",
    "executions TOAST": "executions TOAST",
}


@dataclass
class Store:
    """One store's bytes per execution: in all, by part, and its stored logs' mean."""

    label: str
    total: float
    parts: dict[str, float] = field(default_factory=dict)
    log: float = 0.0


@dataclass
class Measured:
    backend: str
    dataset: Dataset
    generation: str
    stores: list[Store] = field(default_factory=list)


def cached_store(dataset: Dataset, name: str, *, dictionary: bool) -> Path:
    path = DATA_DIR / f"storage-{name}-logs-v{DATASET_VERSION}-scale{dataset.scale:g}.db"
    if not path.exists():
        DATA_DIR.mkdir(exist_ok=True)
        with progress() as bar:
            task = bar.add_task(f"SQLite: generating ({name})", total=dataset.executions)
            generate_sqlite(path, dataset, lambda n: bar.advance(task, n), dictionary=dictionary)
    return path


def sqlite_store(label: str, path: Path) -> Store:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        [(count,)] = conn.execute("SELECT count(*) FROM executions")
        [(pages,)] = conn.execute("PRAGMA page_count")
        [(page_size,)] = conn.execute("PRAGMA page_size")
        [(log,)] = conn.execute("SELECT avg(length(log)) FROM executions")
        sizes = dict(conn.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name"))
    store = Store(label, pages * page_size / count, log=log)
    for name, size in sorted(sizes.items(), key=lambda item: -item[1]):
        if name in PARTS or name.startswith("ix_executions"):
            store.parts[PARTS.get(name, name)] = size / count
    store.parts["everything else"] = store.total - sum(store.parts.values())
    return store


def sqlite(dataset: Dataset) -> Measured:
    started = time.monotonic()
    path, generation = cached_logs_store(dataset)
    skeleton = cached_store(dataset, "skeleton", dictionary=False)
    measured = Measured("SQLite", dataset, f"{generation} ({elapsed(started)} in all)")
    measured.stores = [
        sqlite_store("as stored now (trained dictionary)", path),
        sqlite_store("no dictionary (skeleton)", skeleton),
    ]
    return measured


def postgres_store(label: str, url: str) -> Store:
    with psycopg.connect(url) as conn:
        [(count, log)] = conn.execute("SELECT count(*), avg(length(log)) FROM executions")
        [(total, heap, toast)] = conn.execute(
            "SELECT pg_total_relation_size('executions'), pg_relation_size('executions'), "
            "coalesce(pg_total_relation_size(nullif(reltoastrelid, 0)), 0) "
            "FROM pg_class WHERE relname = 'executions'"
        )
        indexes = conn.execute(
            "SELECT indexrelid::regclass::text, pg_relation_size(indexrelid) "
            "FROM pg_index WHERE indrelid = 'executions'::regclass"
        ).fetchall()
    store = Store(label, total / count, log=float(log))
    store.parts["executions table"] = heap / count
    store.parts["executions TOAST"] = toast / count
    for name, size in sorted(indexes, key=lambda item: -int(item[1])):
        store.parts[PARTS.get(str(name), str(name))] = size / count
    store.parts["everything else"] = store.total - sum(store.parts.values())
    return store


def postgres(admin_url: str, dataset: Dataset) -> Measured:
    with postgres_database(admin_url, DATABASE) as url:
        with progress() as bar:
            task = bar.add_task("PostgreSQL: generating (skeleton)", total=dataset.executions)
            generate_postgres(url, dataset, lambda n: bar.advance(task, n), dictionary=False)
        skeleton = postgres_store("no dictionary (skeleton; COPY, VACUUM ANALYZE)", url)
    with postgres_database(admin_url, DATABASE) as url:
        started = time.monotonic()
        with progress() as bar:
            task = bar.add_task("PostgreSQL: generating executions", total=dataset.executions)
            generate_postgres(url, dataset, lambda n: bar.advance(task, n))
        measured = Measured("PostgreSQL", dataset, elapsed(started))
        measured.stores.append(postgres_store("as stored now (COPY, VACUUM ANALYZE)", url))
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("VACUUM FULL executions")
        measured.stores.append(postgres_store("as stored now, after VACUUM FULL", url))
    measured.stores.insert(1, skeleton)
    return measured


@dataclass
class Scope:
    """Mean stored size of a seed-shaped log, by how many workflows its tenant has."""

    workflows: int
    per_tenant: float
    per_workflow: float


def scope(seed: int = 4) -> list[Scope]:
    """Logs of tenants with 1, 20 and 1,000 equally busy workflows, each workflow with its
    own block ids: one dictionary per tenant (trained as the sweep trains it, on 4,000 of
    its logs) against one per workflow (on 100 of its logs, or 3,900 with one workflow)."""
    rng = random.Random(seed)
    template = log_template()
    blocks = ("6ad63c40-1abc-4289-8287-c62ef8bb2003", "ae331681-25a5-452c-8d21-884fada67437")

    def logs(workflow: int, count: int) -> list[bytes]:
        own = random.Random(workflow)
        ids = [
            (block.encode(), str(uuid.UUID(int=own.getrandbits(128))).encode()) for block in blocks
        ]
        found = []
        for _ in range(count):
            second = FIRST_SECOND + rng.randrange(10**6)
            user = user_id(rng.randrange(100))
            log = new_log(template, rng, execution_id(rng, second), user, second)
            for seed_id, its_id in ids:
                log = log.replace(seed_id, its_id)
            found.append(log)
        return found

    results = []
    for workflows in (1, 20, 1_000):
        per = max(100, (compaction.SAMPLE_LOGS - 100) // workflows)
        training = {w: logs(w, per) for w in range(workflows)}
        held_out = {w: logs(w, max(10, 1_000 // workflows)) for w in range(workflows)}
        sample = [log for w in range(workflows) for log in training[w]]
        tenant, _, _ = train(
            random.Random(seed).sample(sample, min(len(sample), compaction.SAMPLE_LOGS)), None
        )
        by_tenant = codec.Dictionary("tenant", 1, tenant)
        sizes_tenant, sizes_workflow = [], []
        for w in range(workflows):
            own = codec.Dictionary("tenant", 1, train(training[w], None)[0])
            sizes_tenant += [len(codec.pack(log, by_tenant)) for log in held_out[w]]
            sizes_workflow += [len(codec.pack(log, own)) for log in held_out[w]]
        results.append(
            Scope(workflows, statistics.mean(sizes_tenant), statistics.mean(sizes_workflow))
        )
    return results


def run(dataset: Dataset, postgres_url: str | None) -> list[Measured]:
    """Measure on SQLite, then on PostgreSQL when `postgres_url` is given."""
    results = [sqlite(dataset)]
    if postgres_url is not None:
        results.append(postgres(postgres_url, dataset))
    return results


def figures(measured: Measured) -> Iterator[tuple[str, str, str, str, str]]:
    """Table rows: figure, value, target, met, reference."""
    for n, store in enumerate(measured.stores):
        parts = ", ".join(
            f"{name} {size:,.0f}" for name, size in store.parts.items() if round(size)
        )
        value = f"{store.total:,.0f} B ({parts}; the log alone {store.log:,.0f} B)"
        met = "yes" if store.total <= TARGET else f"no ({TARGET / store.total:.0%} of target)"
        now = n == 0
        yield (
            f"bytes on disk per execution: {store.label}",
            value,
            f"≤ {TARGET} B, indexes included" if now else "",
            met if now else "",
            N8N if now else "",
        )


def tables(measured: Measured) -> list[str]:
    """Each store's parts, one line each: for bench/RESULTS.md."""
    return [
        f"{measured.backend}, {store.label}: {store.total:.1f} B/execution; "
        + ", ".join(f"{name} {size:.1f}" for name, size in store.parts.items())
        + f"; log {store.log:.1f}"
        for store in measured.stores
    ]


def scope_lines() -> list[str]:
    """`scope`'s figures, one line each."""
    return [
        f"Dictionary scope, {each.workflows:,} workflows with their own block ids: "
        f"{each.per_tenant:.0f} B a log with one per tenant, {each.per_workflow:.0f} B with "
        "one per workflow"
        for each in scope()
    ]
