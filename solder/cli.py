"""The `solder` command: serve the API, manage API keys, migrate the database."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
import uvicorn
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from solder import __version__, keys
from solder.connectors import PluginError
from solder.credentials import SecretKeyError
from solder.errors import NotFound
from solder.ids import iso_ms
from solder.retention_cli import compact, retention_cli, vacuum
from solder.settings import Settings
from solder.store import queries as q
from solder.store.database import Database
from solder.store.lock import AlreadyServing, ServeLock
from solder.supervisor import (
    SUPERVISOR_ENV,
    become,
    listening_socket,
    orphaned,
    say_ready,
)

if TYPE_CHECKING:
    from solder.app import Solder

T = TypeVar("T")
cli = typer.Typer(
    help="Solder: a self-hostable engine for embedded integrations.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
keys_cli = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
cli.add_typer(keys_cli, name="keys")
cli.add_typer(retention_cli, name="retention")
err = Console(stderr=True)


def main() -> None:
    cli()


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop

        return uvloop.run(coroutine)
    except ImportError:  # pragma: no cover (uvloop is not on every platform)
        return asyncio.run(coroutine)


def _fail(message: str) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}")
    return typer.Exit(1)


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"SOLDER_{'_'.join(str(p) for p in error['loc']).upper()}: {error['msg']}"
            for error in exc.errors()
        )
        raise _fail(f"invalid setting: {problems} (docs/settings.md lists them)") from None


def _database(settings: Settings) -> Database:
    try:
        db = Database(
            settings.database_url,
            sqlite_synchronous=settings.sqlite_synchronous,
            pool_size=settings.database_pool_size,
        )
        db.migrate()
    except Exception as exc:
        raise _fail(
            f"cannot open the database at {settings.database_url}: {exc}\n"
            "Check SOLDER_DATABASE_URL (docs/settings.md)."
        ) from exc
    return db


@cli.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface to listen on [SOLDER_HOST].")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on [SOLDER_PORT].")] = None,
    dev: Annotated[
        bool,
        typer.Option(
            help="Dev mode: create a dev tenant, API key, demo user and demo workflow if "
            "missing, run the demo, print a curl line listing its logs, and let the http "
            "connector call loopback and private addresses, and log every request."
        ),
    ] = False,
    worker: Annotated[
        bool,
        typer.Option(
            help="Also run executions, schedules and retention in this process. "
            "--no-worker (PostgreSQL only) serves the API alone, for `solder worker` "
            "processes to run what it queues."
        ),
    ] = True,
    processes: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=64,
            help="Serve with this many processes, each serving the API and running "
            "executions, restarted if one dies [SOLDER_PROCESSES]. One per core.",
        ),
    ] = None,
) -> None:
    """Migrate the database, then serve the API and run workflows."""
    from solder.api import create_app

    settings = _settings()
    if not worker and settings.is_sqlite:
        raise _fail(
            "--no-worker needs PostgreSQL: on SQLite the server runs its executions itself. "
            "Set SOLDER_DATABASE_URL=postgresql://... to run workers apart (docs/deploy.md)."
        )
    overrides: dict[str, Any] = {}
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    if processes is not None:
        overrides["processes"] = processes
    supervised = SUPERVISOR_ENV in os.environ  # one of the processes of --processes N
    if dev:
        overrides["http_allow_private_networks"] = True
        overrides["access_log"] = True
    settings = settings.model_copy(update=overrides)
    if dev and settings.processes > 1:
        raise _fail("--dev serves with one process: leave out --processes and SOLDER_PROCESSES")
    _configure_logging()
    db = _database(settings)  # fail early, with a clear message, on a bad database URL
    _run(db.dispose())
    lock = None if db.sqlite_file is None or supervised else ServeLock(db.sqlite_file)
    if lock is not None:
        try:  # fail early, with a clear message, when another process serves the database
            lock.acquire()
        except AlreadyServing as exc:
            raise _fail(exc.message) from None
        if settings.processes == 1:
            lock.release()  # the server takes it for good as it starts
    try:
        app = create_app(settings, dev=dev, worker=worker, supervised=supervised)
    except (PluginError, SecretKeyError) as exc:
        raise _fail(str(exc)) from None
    if settings.processes > 1 and not supervised:
        _supervise(settings, db, lock, worker=worker)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level="info",
        access_log=settings.access_log,
    )
    server = uvicorn.Server(config)

    async def main() -> None:
        announcer = asyncio.create_task(_announce(server, app)) if dev else None
        if supervised:
            watch = asyncio.create_task(_supervised(server))
            try:
                sock = listening_socket(settings.host, settings.port)
            except OSError as exc:
                raise _fail(f"could not listen on {settings.host}:{settings.port}: {exc}") from None
            await server.serve(sockets=[sock])
            watch.cancel()
        else:
            await server.serve()
        if announcer is not None:
            announcer.cancel()

    try:
        _run(main())
    except SystemExit:  # uvicorn exits when it cannot bind
        if server.started:
            raise
    if not server.started:
        raise _fail(
            f"could not listen on {settings.host}:{settings.port}: is another process using "
            "it? Choose another with --port or SOLDER_PORT."
        )


def _supervise(
    settings: Settings, db: Database, lock: ServeLock | None, *, worker: bool
) -> NoReturn:
    """`serve --processes N`: hold the port, migrate, then become the supervisor of N
    serving processes (`solder/supervisor.py`), keeping the port and the serve lock."""
    try:
        held = listening_socket(settings.host, settings.port, listen=False)
    except OSError as exc:
        raise _fail(
            f"could not listen on {settings.host}:{settings.port} ({exc.strerror}): is "
            "another process using it? Choose another with --port or SOLDER_PORT."
        ) from None
    db.migrate()
    # The processes read their settings from the environment, as this one did.
    os.environ.update(
        SOLDER_HOST=settings.host,
        SOLDER_PORT=str(held.getsockname()[1]),  # the port chosen, if it was 0
        SOLDER_PROCESSES=str(settings.processes),
    )
    keep = [held.fileno(), *([] if lock is None else [lock.fileno()])]
    become(
        settings.processes,
        grace_seconds=settings.shutdown_grace_seconds,
        worker=worker,
        keep=keep,
    )


async def _supervised(server: uvicorn.Server) -> None:
    """A supervised process: say when it serves; stop when the supervisor is gone."""
    while not server.started:  # noqa: ASYNC110 (uvicorn exposes a flag, not an event)
        await asyncio.sleep(0.05)
    say_ready()
    while not orphaned():  # noqa: ASYNC110 (nothing signals a parent's end)
        await asyncio.sleep(1.0)
    server.should_exit = True


def _configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(name)s: %(message)s")
    # An HTTP client's debug logs name the URLs it calls (query strings may hold
    # secrets); alembic logs its plugins. procrastinate logs every job's start and end;
    # Solder logs what matters of them. psycopg's pool logs every connection it hands out.
    for noisy in ("aiohttp", "alembic", "procrastinate", "psycopg"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


async def _announce(server: uvicorn.Server, app: Any) -> None:
    from solder import dev

    while not server.started:  # noqa: ASYNC110 (uvicorn exposes a flag, not an event)
        await asyncio.sleep(0.05)
    settings: Settings = app.state.solder.settings
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host  # noqa: S104
    port = server.servers[0].sockets[0].getsockname()[1] if server.servers else settings.port
    try:
        line = await dev.bootstrap(app.state.solder, f"http://{host}:{port}")
    except Exception as exc:
        err.print(f"[red]dev setup failed:[/red] {exc!r}")
        return
    err.print(
        "\n[bold green]Solder is running in dev mode.[/bold green] "
        "The demo workflow ran; list its logs with:"
    )
    print(line, flush=True)
    err.print()


@cli.command("worker")
def worker_command(
    concurrency: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=1024,
            help="Executions this worker runs at once [SOLDER_WORKER_CONCURRENCY].",
        ),
    ] = None,
) -> None:
    """Run executions, schedules and retention from a PostgreSQL database, until SIGTERM.

    Start any number, on any number of machines. On SIGTERM or Ctrl-C a worker takes no
    more work and lets running executions finish (SOLDER_SHUTDOWN_GRACE_SECONDS); what is
    still running then resumes on another worker after its last finished block.
    """
    from solder.app import Solder

    settings = _settings()
    if settings.is_sqlite:
        raise _fail(
            "solder worker needs PostgreSQL: set SOLDER_DATABASE_URL=postgresql://... "
            "(on SQLite, `solder serve` runs executions itself; see docs/deploy.md)."
        )
    _configure_logging()
    _run(_database(settings).dispose())
    try:
        solder = Solder(settings, concurrency=concurrency)
    except (PluginError, SecretKeyError) as exc:
        raise _fail(str(exc)) from None
    _run(_work(solder))


async def _work(solder: Solder) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await solder.start()
    log = logging.getLogger("solder.worker")
    log.info("worker %d started: running executions from the queue", os.getpid())
    await stop.wait()
    log.info(
        "stopping: running executions get %.0f s to finish", solder.settings.shutdown_grace_seconds
    )
    await solder.stop()
    log.info("worker stopped")


@keys_cli.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="Tenant name; created if it does not exist.")],
) -> None:
    """Create an API key for a tenant. The key is printed once, alone on the last line."""

    async def create() -> tuple[keys.Tenant, str, str]:
        async with db.write() as conn:
            owner = await keys.ensure_tenant(conn, tenant)
            key_id, key = await keys.create_key(conn, owner)
        await db.dispose()
        return owner, key_id, key

    db = _database(_settings())
    owner, key_id, key = _run(create())
    err.print(
        f"Created API key [bold]{key_id}[/bold] for tenant [bold]{owner.name}[/bold] "
        f"({owner.id}). Store it now: it is not shown again."
    )
    print(key, flush=True)


@keys_cli.command("list")
def keys_list() -> None:
    """List API keys (never the keys themselves, only their first characters)."""

    async def fetch() -> list[Any]:
        async with db.read() as conn:
            found = list(await q.list_api_keys(conn))
        await db.dispose()
        return found

    db = _database(_settings())
    header = ("id", "tenant", "starts with", "created", "revoked")
    rows = [
        (
            row["id"],
            row["tenant_name"],
            row["prefix"] + "…",
            iso_ms(row["created_at"]) or "",
            iso_ms(row["revoked_at"]) or "",
        )
        for row in _run(fetch())
    ]
    print_table(header, rows)


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A Rich table on a terminal; tab-separated lines, whole values, when piped (scripts)."""
    out = Console()
    if not out.is_terminal:
        for line in (header, *rows):
            print("\t".join(line))
        return
    table = Table(*header)
    for values in rows:
        table.add_row(*values)
    out.print(table)


@keys_cli.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (see `keys list`).")],
) -> None:
    """Revoke an API key: requests with it get 401 from then on."""

    async def revoke() -> None:
        async with db.write() as conn:
            await keys.revoke(conn, key_id)
        await db.dispose()

    db = _database(_settings())
    try:
        _run(revoke())
    except NotFound as exc:
        raise _fail(exc.message) from exc
    err.print(f"Revoked API key {key_id}.")


@cli.command()
def migrate() -> None:
    """Bring the database schema up to date (serve does this by itself)."""
    settings = _settings()
    _database(settings)
    err.print(f"Database at {settings.database_url} is up to date.")


cli.command("vacuum")(vacuum)
cli.command("compact")(compact)


@cli.command("secret-key")
def secret_key() -> None:
    """Print a new key for SOLDER_SECRET_KEY (it encrypts credentials at rest)."""
    from cryptography.fernet import Fernet

    print(Fernet.generate_key().decode())


@cli.command()
def version() -> None:
    """Print Solder's version."""
    print(__version__)


if __name__ == "__main__":  # pragma: no cover
    main()
