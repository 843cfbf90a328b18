"""The logs-read data set: seed-shaped executions written straight into Solder's tables.

At scale 1: 1,000 workflows x 100 users with 10 executions each, plus one workflow whose
user 0 has 100,000, interleaved in time as real traffic would be. The schema comes from
Solder's own migrations and the tenant from `keys.ensure_tenant`; the rows are then
inserted in bulk (SQLite: executemany in one transaction; PostgreSQL: COPY). Each
execution's `log` is the document the engine would have stored for the contract's seed
execution (`logs.render`), with its own id, user, timestamps and item ids (the engine
draws a random id for every item), stored as the engine stores it (`codec.pack`).

The store is as a server's is once its compaction sweep has run (solder/compaction.py):
the tenant's log dictionary trained on a sample of its logs (`training.train`, stored
with `queries.insert_dictionary`), every log written with it (`dictionary=False`: as
before any dictionary, with the skeleton). The row's trigger is empty, as the engine's
end of an execution leaves it (the log holds it).
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import orjson
import psycopg

from solder import compaction, ids, keys, logs, training
from solder.ids import now_ms
from solder.store import codec
from solder.store import queries as q
from solder.store.database import Database

VERSION = 11  # of the data set: change it whenever the rows change, so caches are rebuilt
TENANT = "bench-logs"
ROOT = Path(__file__).resolve().parent.parent
SEED = ROOT.parent / "shared" / "contract" / "seed-logs-response.json"
DEFINITION = (ROOT / "examples" / "klaviyo-profile-lookup.json").read_text()
NANOID = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_-"
BATCH = 5_000
# The seed execution's second, its steps' offsets (ms) within it: 233 + 614 < 1000, so
# every timestamp of a log shares its execution's second.
SEED_SECOND = "2024-11-15T17:57:42"
START_MS = 233
STEP_TIMES = ((0, 54), (158, 548))
STOP_MS = 614
FIRST_SECOND = 1_731_693_462  # the seed's second, as epoch seconds
EXECUTION_COLUMNS = (
    "tenant_id",
    "id",
    "workflow_number",
    "user_number",
    "workflow_version",
    "status",
    "trigger_id",
    "trigger_data",
    "started_at",
    "stopped_at",
    "log",
    "workflow_position",
    "user_position",
)

Row = tuple[Any, ...]
Edit = Callable[[Row], Row]


@dataclass(frozen=True)
class Dataset:
    """How many workflows, users and executions; `scale` 1 is the issue's million."""

    scale: float

    @property
    def workflows(self) -> int:
        return max(1, round(1_000 * self.scale))

    users = 100
    per_pair = 10

    @property
    def big(self) -> int:
        """Executions of the big pair: workflow `workflows` (the last one), user 0."""
        return max(1, round(100_000 * self.scale))

    @property
    def executions(self) -> int:
        return self.workflows * self.users * self.per_pair + self.big

    @property
    def name(self) -> str:
        return f"logs-v{VERSION}-scale{self.scale:g}"


def workflow_id(index: int) -> str:
    return f"b0000000{index:016x}"


def user_id(index: int) -> str:
    return f"a0000000{index:016x}"


def workflow_number(index: int) -> int:
    """The number `executions` knows workflow `index` by (solder/store/numbers.py)."""
    return index + 1


def user_number(index: int) -> int:
    return index + 1


def log_template() -> str:
    """The stored log of the seed execution, with `{eid}`, `{uid}`, `{second}` and its
    items' ids `{item0}` and `{item1}` to fill."""
    seed = orjson.loads(SEED.read_bytes())["data"][0]
    start = FIRST_SECOND * 1000 + START_MS
    execution = {
        "id": "@eid@",
        "user_id": "@uid@",
        "status": "succeeded",
        "started_at": start,
        "stopped_at": start + STOP_MS,
        "workflow_version": 1,
        "rerun_of": None,
    }
    steps = [
        {
            "started_at": start + began,
            "stopped_at": start + ended,
            "data": orjson.dumps(result["data"]),
            "inputs": orjson.dumps(given["data"]),
            "connector_id": result["connectorId"],
            "error": None,
        }
        for result, given, (began, ended) in zip(
            seed["results"], seed["inputs"], STEP_TIMES, strict=True
        )
    ]
    text = orjson.dumps(logs.render(execution, steps)).decode()
    text = text.replace("{", "{{").replace("}", "}}")
    for n, item in enumerate(
        data[0][0]["id"] for data in (result["data"] for result in seed["results"])
    ):
        text = text.replace(item, f"{{item{n}}}")
    return text.replace("@eid@", "{eid}").replace("@uid@", "{uid}").replace(SEED_SECOND, "{second}")


def new_log(template: str, rng: random.Random, execution: str, user: str, second: int) -> bytes:
    """One execution's log document: the template with its ids and time."""
    items = (str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(2))
    return template.format(
        eid=execution,
        uid=user,
        second=time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)),
        **{f"item{n}": item for n, item in enumerate(items)},
    ).encode()


def execution_id(rng: random.Random, second: int) -> str:
    """An id as Solder draws one for an execution started at START_MS into `second`."""
    return ids.time_prefix(second * 1000 + START_MS) + "".join(rng.choices(NANOID, k=12))


def sample_logs(dataset: Dataset) -> list[bytes]:
    """What the compaction sweep trains the tenant's dictionary on: `SAMPLE_LOGS` of its
    logs (other ids and times than the stored ones', drawn alike)."""
    rng = random.Random(-VERSION)
    template = log_template()
    found = []
    for _ in range(compaction.SAMPLE_LOGS):
        second = FIRST_SECOND + rng.randrange(dataset.executions)
        user = user_id(rng.randrange(dataset.users))
        found.append(new_log(template, rng, execution_id(rng, second), user, second))
    return found


def execution_rows(
    dataset: Dataset,
    tenant_id: str,
    dictionary: codec.Dictionary | None,
    positions: dict[tuple[int, int], int],
) -> Iterator[Row]:
    """Every execution, one a second in time order; the big pair's every 10th row or so.

    Each takes the next position of its workflow's and its user's logs pages, as
    recording one does; `positions` ends with each listing's last (user number 0: all
    users)."""
    rng = random.Random(VERSION)
    template = log_template()
    ordinary = dataset.workflows * dataset.users * dataset.per_pair
    big_every = max(1, ordinary // dataset.big)
    big_workflow = dataset.workflows
    pairs = [(w, u) for w in range(dataset.workflows) for u in range(dataset.users)]
    big_left, done = dataset.big, 0
    for count in range(ordinary + dataset.big):
        if big_left and (count % (big_every + 1) == big_every or done == ordinary):
            workflow, user = big_workflow, 0
            big_left -= 1
        else:
            workflow, user = pairs[done % len(pairs)]
            done += 1
        second = FIRST_SECOND + count + 1
        started = second * 1000 + START_MS
        execution = execution_id(rng, second)
        log = new_log(template, rng, execution, user_id(user), second)
        listings = ((workflow_number(workflow), 0), (workflow_number(workflow), user_number(user)))
        for listing in listings:
            positions[listing] = positions.get(listing, 0) + 1
        yield (
            *(tenant_id, execution, workflow_number(workflow), user_number(user)),
            *(1, "succeeded", "", ""),
            *(started, started + STOP_MS, codec.pack(log, dictionary)),
            *(positions[listing] for listing in listings),
        )


def tables(
    dataset: Dataset,
    tenant_id: str,
    dictionary: codec.Dictionary | None,
    edit: Edit | None = None,
) -> Iterator[tuple[str, tuple[str, ...], Iterable[Row]]]:
    """Each table's name, columns and rows, in an order the foreign keys accept; `edit`
    changes each execution's row (retention_load.py ages most of them)."""
    created = FIRST_SECOND * 1000
    workflows = range(dataset.workflows + 1)
    yield (
        "workflows",
        ("tenant_id", "id", "name", "latest_version", "trigger_type", "created_at", "updated_at"),
        [
            (tenant_id, workflow_id(w), f"bench {w}", 1, "webhook", created, created)
            for w in workflows
        ],
    )
    yield (
        "workflow_versions",
        ("tenant_id", "workflow_id", "version", "definition", "created_at", "trigger_type"),
        [(tenant_id, workflow_id(w), 1, DEFINITION, created, "webhook") for w in workflows],
    )
    yield (
        "users",
        ("tenant_id", "id", "username", "full_name", "created_at"),
        [(tenant_id, user_id(u), f"user{u}", f"User {u}", created) for u in range(dataset.users)],
    )
    yield (
        "workflow_numbers",
        ("number", "tenant_id", "workflow_id"),
        [(workflow_number(w), tenant_id, workflow_id(w)) for w in workflows],
    )
    yield (
        "user_numbers",
        ("number", "tenant_id", "user_id"),
        [(user_number(u), tenant_id, user_id(u)) for u in range(dataset.users)],
    )
    yield (
        "installations",
        ("tenant_id", "workflow_id", "user_id", "version", "active", "installed_at", "updated_at"),
        [
            (tenant_id, workflow_id(w), user_id(u), 1, True, created, created)
            for w in workflows
            for u in range(dataset.users if w < dataset.workflows else 1)
        ],
    )
    positions: dict[tuple[int, int], int] = {}
    rows = execution_rows(dataset, tenant_id, dictionary, positions)
    yield "executions", EXECUTION_COLUMNS, rows if edit is None else map(edit, rows)
    # Read once the executions above are written: each listing's last position.
    yield (
        "log_listings",
        ("workflow_number", "user_number", "last_position", "deleted", "deleted_top"),
        ((workflow, user, last, 0, 0) for (workflow, user), last in sorted(positions.items())),
    )


def batches(rows: Iterable[Row]) -> Iterator[list[Row]]:
    iterator = iter(rows)
    while batch := list(islice(iterator, BATCH)):
        yield batch


async def bench_tenant(url: str) -> keys.Tenant:
    db = Database(url)
    try:
        async with db.write() as conn:
            return await keys.ensure_tenant(conn, TENANT)
    finally:
        await db.dispose()


async def create_api_key(url: str) -> str:
    """A new API key of the bench tenant, made as `solder keys create` makes it."""
    db = Database(url)
    try:
        async with db.write() as conn:
            _key_id, key = await keys.create_key(conn, await keys.ensure_tenant(conn, TENANT))
            return key
    finally:
        await db.dispose()


def prepare(url: str, dataset: Dataset, dictionary: bool) -> tuple[str, codec.Dictionary | None]:
    """Migrate an empty database; the id of its bench tenant, and with `dictionary` the
    tenant's log dictionary, trained and stored as the compaction sweep does."""
    Database(url).migrate()
    tenant_id = asyncio.run(bench_tenant(url)).id
    if not dictionary:
        return tenant_id, None
    content, _, _ = training.train(sample_logs(dataset), None)
    asyncio.run(store_dictionary(url, tenant_id, content))
    return tenant_id, codec.Dictionary(tenant_id, 1, content)


async def store_dictionary(url: str, tenant_id: str, content: bytes) -> None:
    db = Database(url)
    try:
        async with db.write() as conn:
            now = now_ms()
            dictionary_id = await q.insert_dictionary(
                conn, tenant_id, content=content, samples=compaction.SAMPLE_LOGS, created_at=now
            )
            await q.update_dictionary(conn, tenant_id, dictionary_id, compacted_at=now)
    finally:
        await db.dispose()


def generate_sqlite(
    path: Path,
    dataset: Dataset,
    advance: Callable[[int], None],
    edit: Edit | None = None,
    *,
    dictionary: bool = True,
) -> None:
    """Write the data set into a new SQLite file at `path` (built aside, then renamed)."""
    building = path.with_name(path.name + ".building")
    for stale in (building, Path(f"{building}-wal"), Path(f"{building}-shm")):
        stale.unlink(missing_ok=True)
    tenant_id, trained = prepare(f"sqlite:///{building}", dataset, dictionary)
    conn = sqlite3.connect(building, isolation_level=None)
    try:
        # Generation only: a crash here loses nothing but the file being built.
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-1000000")
        conn.execute("BEGIN")
        for table, columns, rows in tables(dataset, tenant_id, trained, edit):
            marks = ", ".join("?" * len(columns))
            insert = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"
            for batch in batches(rows):
                conn.executemany(insert, batch)
                if table == "executions":
                    advance(len(batch))
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    building.rename(path)


def generate_postgres(
    url: str,
    dataset: Dataset,
    advance: Callable[[int], None],
    edit: Edit | None = None,
    *,
    dictionary: bool = True,
) -> None:
    """Write the data set into the empty PostgreSQL database at `url`, with COPY."""
    tenant_id, trained = prepare(url, dataset, dictionary)
    with psycopg.connect(url) as conn, conn.cursor() as cursor:
        for table, columns, rows in tables(dataset, tenant_id, trained, edit):
            with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                for batch in batches(rows):
                    for row in batch:
                        copy.write_row(row)
                    if table == "executions":
                        advance(len(batch))
    # Autovacuum would do it in production (it is off on this server): the visibility
    # map and the planner's statistics.
    with psycopg.connect(url, autocommit=True) as conn:
        for table in ("workflow_numbers", "user_numbers"):  # written with their numbers
            conn.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'number'), max(number))"
                f" FROM {table}"
            )
        conn.execute("VACUUM ANALYZE")
