"""`solder retention show|set|clear|purge`, `solder vacuum` and `solder compact`: the
commands of the stored logs' upkeep.

Apart from cli.py to keep each module small; they use cli.py's helpers (settings,
database, errors on standard error), imported when a command runs, since cli.py imports
this module to register the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from solder import retention, workflows
from solder.compaction import Compaction
from solder.errors import SolderError
from solder.keys import Tenant
from solder.retention import Retention
from solder.settings import Settings
from solder.store import queries as q
from solder.store import vacuum as full_vacuum
from solder.store.database import Database

retention_cli = typer.Typer(
    help="Show and set how long execution logs are kept; purge expired logs now.",
    no_args_is_help=True,
)

TenantOption = Annotated[str, typer.Option(help="Tenant name (see `solder keys list`).")]
WorkflowOption = Annotated[
    str | None,
    typer.Option(help="A workflow of the tenant, by id or name: set its own retention."),
]


def _open() -> tuple[Settings, Database]:
    from solder.cli import _database, _settings

    settings = _settings()
    return settings, _database(settings)


def _execute(db: Database, work: Any) -> Any:
    """Run `work` (a coroutine), then close the database; errors as the CLI shows them."""
    from solder.cli import _fail, _run

    async def run() -> Any:
        try:
            return await work
        finally:
            await db.dispose()

    try:
        return _run(run())
    except SolderError as exc:
        raise _fail(exc.message) from None


async def _tenant(db: Database, name: str) -> Tenant:
    async with db.read() as conn:
        row = await q.tenant_by_name(conn, name)
    if row is None:
        raise SolderError(f"no tenant named {name!r}; `solder keys list` shows the tenants")
    return Tenant(row["id"], row["name"])


_SOURCES = {
    "workflow": "its own",
    "tenant": "the tenant's",
    "default": "the server's default, SOLDER_LOG_RETENTION_DAYS",
}


def _days(view: dict[str, Any]) -> str:
    return f"for {view['days']} days ({_SOURCES[view['source']]})"


@retention_cli.command("show")
def show(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant (by name).")] = None,
) -> None:
    """Show how long logs are kept: the server's default, each tenant's, each workflow's own."""
    from solder.cli import err, print_table

    settings, db = _open()

    async def views() -> list[dict[str, Any]]:
        if tenant is not None:
            owners = [await _tenant(db, tenant)]
        else:
            async with db.read() as conn:
                owners = [Tenant(r["id"], r["name"]) for r in await q.tenants_retention(conn)]
        found = []
        async with db.read() as conn:
            for owner in owners:
                found.append(
                    {"tenant": owner.name, **await retention.tenant_view(conn, owner, settings)}
                )
        return found

    header = ("tenant", "workflow", "days", "source")
    rows: list[tuple[str, ...]] = []
    for view in _execute(db, views()):
        rows.append((view["tenant"], "", str(view["days"]), view["source"]))
        rows += [
            (view["tenant"], w["name"], str(w["days"]), w["source"]) for w in view["workflows"]
        ]
    err.print(
        f"Server default (SOLDER_LOG_RETENTION_DAYS): {settings.log_retention_days:g} days. "
        "A workflow not listed keeps its tenant's."
    )
    print_table(header, rows)


def _set(tenant: str, workflow: str | None, retention_ms: int | None) -> None:
    from solder.cli import err

    settings, db = _open()

    async def store() -> str:
        owner = await _tenant(db, tenant)
        async with db.write() as conn:
            if workflow is None:
                await retention.set_for_tenant(conn, owner, retention_ms)
                view = await retention.tenant_view(conn, owner, settings)
                return f"Logs of tenant {owner.name} are kept {_days(view)}."
            row = await workflows.resolve(conn, owner, workflow)
            await retention.set_for_workflow(conn, owner, row, retention_ms)
            row = await workflows.resolve(conn, owner, row["id"])
            view = await retention.workflow_view(conn, owner, row, settings)
            return (
                f"Logs of workflow {row['name']} ({row['id']}) of tenant {owner.name} are "
                f"kept {_days(view)}."
            )

    err.print(_execute(db, store()))


@retention_cli.command("set")
def set_retention(
    days: Annotated[
        float, typer.Argument(help="Days to keep logs (fractions allowed), 1/24 to 3650.")
    ],
    tenant: TenantOption,
    workflow: WorkflowOption = None,
) -> None:
    """Keep a tenant's logs, or one workflow's, for DAYS days from when each run started."""
    from solder.cli import _fail

    try:
        retention_ms = retention.days_to_ms(days)
    except SolderError as exc:
        raise _fail(exc.message) from None
    _set(tenant, workflow, retention_ms)


@retention_cli.command("clear")
def clear(tenant: TenantOption, workflow: WorkflowOption = None) -> None:
    """Make a tenant inherit the server's retention, or a workflow its tenant's."""
    _set(tenant, workflow, None)


def _progress() -> Progress:
    from solder.cli import err

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
    )


async def _give_free_pages_back(retention: Retention, progress: Progress) -> None:
    """On SQLite, give every free page of the file back to the file system."""
    free = await retention.free_pages()
    if free:
        task = progress.add_task("giving free pages back", total=free)
        await retention.reclaim(keep=0, on_step=lambda n: progress.advance(task, n))


def _size(path: Path | None) -> int:
    if path is None:
        return 0
    return sum(f.stat().st_size for f in path.parent.glob(path.name + "*") if f.is_file())


def _mib(size: int) -> str:
    return f"{size / 1_048_576:,.1f} MiB"


@retention_cli.command("purge")
def purge() -> None:
    """Purge every log past its retention now, then give the space back (SQLite).

    Runs as the server's sweep does, in small batches, so it can run beside a server.
    """
    from solder.cli import err

    settings, db = _open()
    sweep = Retention(db, settings)

    async def run() -> tuple[int, int]:
        before = _size(db.sqlite_file)
        with _progress() as progress:
            task = progress.add_task("purging expired logs", total=await sweep.expired())
            purged = await sweep.purge(lambda n: progress.advance(task, n))
            progress.update(task, total=progress.tasks[task].completed)
            await _give_free_pages_back(sweep, progress)
        if db.sqlite_file is not None:
            full_vacuum.checkpoint_sqlite(db.sqlite_file)
        return purged, before - _size(db.sqlite_file)

    purged, freed = _execute(db, run())
    err.print(f"Purged {purged:,} executions past retention.")
    if db.sqlite_file is not None:
        err.print(f"The database files shrank by {_mib(max(freed, 0))}.")
        if full_vacuum.sqlite_needs_switch(db.sqlite_file):
            err.print("This database predates incremental vacuum: run `solder vacuum` once.")


async def _nothing() -> None:
    return None


def vacuum() -> None:
    """Give the space of deleted logs back (SQLite), or VACUUM the busy tables (PostgreSQL).

    SQLite: a database made before retention gave space back is rewritten once (VACUUM)
    with incremental vacuum, which the retention sweep then uses by itself; this needs free
    disk as large as the database, and writers wait while it runs: stop the server for
    a large file. Later runs only give back free pages, in small steps. PostgreSQL:
    VACUUM (ANALYZE) executions, steps and idempotency keys, for when autovacuum is off
    or behind.
    """
    from solder.cli import err

    settings, db = _open()
    path = db.sqlite_file
    if path is None:
        _execute(db, _nothing())
        with err.status("VACUUM (ANALYZE) executions, steps, idempotency_keys"):
            full_vacuum.vacuum_postgres(db.libpq_url)
        err.print("Vacuumed.")
        return
    before = _size(path)
    if full_vacuum.sqlite_needs_switch(path):
        _execute(db, _nothing())  # closes it: VACUUM wants no other connection of ours
        with err.status(f"Rewriting {path} with incremental vacuum (VACUUM)"):
            full_vacuum.switch_sqlite_to_incremental(path)
    else:
        sweep = Retention(db, settings)

        async def reclaim() -> None:
            with _progress() as progress:
                task = progress.add_task("giving free pages back", total=await sweep.free_pages())
                await sweep.reclaim(keep=0, on_step=lambda n: progress.advance(task, n))

        _execute(db, reclaim())
        full_vacuum.checkpoint_sqlite(path)
    err.print(f"{path}: {_mib(before)} -> {_mib(_size(path))}.")


def compact(
    tenant: Annotated[
        str | None, typer.Option(help="Only this tenant (by name); every tenant if absent.")
    ] = None,
    retrain: Annotated[
        bool,
        typer.Option(
            "--retrain",
            help="Train a new dictionary now even if the newest is recent, keep it whatever "
            "it saves, recompress every log with it and delete the old ones (e.g. after "
            "erasing a user's logs: a dictionary holds fragments of the logs it was "
            "trained on).",
        ),
    ] = False,
) -> None:
    """Train log dictionaries where due and recompress stored logs with them, now.

    What the server's compaction sweep does every SOLDER_COMPACTION_SWEEP_SECONDS, at
    full speed: a tenant with 1,000 logs or more gets a zstd dictionary trained on its own
    logs; its stored logs not yet on its newest dictionary are recompressed with it, in
    batches; dictionaries no stored log needs are deleted. It can run beside a server
    (which switches to a new dictionary within seconds).
    """
    from solder.cli import err

    settings, db = _open()
    if not settings.log_dictionaries:
        _execute(db, _nothing())
        err.print("SOLDER_LOG_DICTIONARIES is false: nothing to do.")
        return
    sweep = Compaction(db, settings)

    async def run() -> tuple[Any, int]:
        before = _size(db.sqlite_file)
        owners = None if tenant is None else [(await _tenant(db, tenant)).id]
        with _progress() as progress:
            task = progress.add_task("recompressing stored logs", total=None)
            swept = await sweep.sweep(
                by_hand=True,
                retrain=retrain,
                tenant_ids=owners,
                on_batch=lambda n: progress.advance(task, n),
            )
            progress.update(task, total=progress.tasks[task].completed)
            # Smaller rows leave pages to merge: SQLite frees them, and they go back.
            await _give_free_pages_back(Retention(db, settings), progress)
        if db.sqlite_file is not None:
            full_vacuum.checkpoint_sqlite(db.sqlite_file)
        return swept, before - _size(db.sqlite_file)

    swept, freed = _execute(db, run())
    if swept.busy:
        err.print("Another Solder process is compacting this database now: try again later.")
        return
    err.print(
        f"Trained {swept.trained} log dictionaries, recompressed {swept.recompressed:,} logs, "
        f"deleted {swept.deleted} dictionaries no log needed."
    )
    if swept.unreadable:
        err.print(
            f"[yellow]{swept.unreadable:,} stored logs could not be read (their dictionary "
            "is missing) and were left as they were.[/yellow]"
        )
    if db.sqlite_file is not None:
        err.print(f"The database files shrank by {_mib(max(freed, 0))}.")
