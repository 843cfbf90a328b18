"""The HTTP API: the Alloy Embedded API, version 2025-09 (contract/API.md)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from solder import __version__
from solder.api import credentials, demo, errors, logs, retention, run, users, workflows
from solder.api.protocol import ProtocolMiddleware
from solder.api.responses import OrjsonResponse
from solder.app import Solder
from solder.settings import Settings


def create_app(
    settings: Settings | None = None,
    *,
    dev: bool = False,
    worker: bool = True,
    shortcuts: bool = True,
    supervised: bool = False,
) -> FastAPI:
    """The ASGI application; starting it migrates the database and starts the workers
    (none with `worker=False`, PostgreSQL only: `solder worker` processes run them).

    `shortcuts=False` leaves out the shortcuts that serve the hottest requests (a logs
    page, a run) before FastAPI's routing: every request then goes through the routes,
    which answer the same (the tests compare the two).

    `supervised`: one of the processes of `solder serve --processes` (its supervisor
    holds the SQLite database's serve lock)."""
    solder = Solder(settings or Settings(), worker=worker, supervised=supervised)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await solder.start()
        try:
            yield
        finally:
            await solder.stop()

    app = FastAPI(
        title="Solder",
        version=__version__,
        summary="Embedded integrations engine speaking the Alloy Embedded API 2025-09.",
        lifespan=lifespan,
        default_response_class=OrjsonResponse,
    )
    app.state.solder = solder
    errors.install(app)

    @app.get("/health", tags=["health"])
    async def health() -> dict[str, str]:
        """Liveness: answers without authentication."""
        return {"status": "ok"}

    # Routes are matched in order: the logs, the hottest, come first.
    for module in (logs, users, credentials, workflows, retention, run):
        app.include_router(module.router)
    if dev:
        app.include_router(demo.router)
    # The last added is the outermost: the protocol's checks come before the shortcuts.
    if shortcuts:
        app.add_middleware(run.RunShortcut)
        app.add_middleware(logs.LogsShortcut)
    app.add_middleware(ProtocolMiddleware, max_body_bytes=solder.settings.max_body_bytes)
    return app
