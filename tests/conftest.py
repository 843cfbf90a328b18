"""Fixtures: a real Solder server on loopback over a real SQLite file, and a real upstream."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from solder import keys
from solder.api import create_app
from solder.settings import Settings
from solder.store.database import Database
from tests import databases
from tests.upstream import Upstream

TIMEOUT = 30.0
REQUIRE_SERVICES = os.environ.get("SOLDER_REQUIRE_SERVICES") == "1"


def need_service(missing: str | None) -> None:
    """Skip (or, in CI with SOLDER_REQUIRE_SERVICES=1, fail) when a service is missing."""
    if missing is None:
        return
    if REQUIRE_SERVICES:
        pytest.fail(f"{missing} (SOLDER_REQUIRE_SERVICES=1)", pytrace=False)
    pytest.skip(missing)


@pytest.fixture(scope="session", autouse=True)
def test_database() -> Iterator[str]:
    """The database backend of this run; on PostgreSQL, its migrated template."""
    if databases.on_postgres():
        need_service(databases.postgres_reachable())
        databases.prepare_template()
    yield databases.BACKEND
    databases.drop_all()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    """A Solder server running in a thread of the test process, as `solder serve` runs it."""

    def __init__(self, settings: Settings, *, worker: bool = True, shortcuts: bool = True) -> None:
        # Bound here and handed to uvicorn, so that no other process can take the port
        # between its choice and the server's start (as a port found free, then bound
        # by the server, could: "address already in use").
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        settings = settings.model_copy(update={"port": self._socket.getsockname()[1]})
        self.settings = settings
        self.app = create_app(settings, worker=worker, shortcuts=shortcuts)
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=settings.port,
            log_level="warning",
            ws="none",
            lifespan="on",
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )
        self.base_url = f"http://127.0.0.1:{settings.port}"

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + TIMEOUT
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the Solder test server did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(TIMEOUT)
        self._socket.close()

    def new_key(self, tenant: str) -> str:
        """An API key of `tenant` (created if needed), made as `solder keys create` makes it."""
        return create_key(self.settings, tenant)


def create_key(settings: Settings, tenant: str) -> str:
    async def create() -> str:
        db = Database(settings.database_url)
        try:
            async with db.write() as conn:
                owner = await keys.ensure_tenant(conn, tenant)
                return (await keys.create_key(conn, owner))[1]
        finally:
            await db.dispose()

    return asyncio.run(create())


def settings_for(data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "database_url": databases.database_url(data_dir),
        "port": free_port(),
        "http_allow_private_networks": True,
        "shutdown_grace_seconds": 5.0,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start Solder servers with given settings; each on its own SQLite file under tmp_path."""
    started: list[Server] = []

    def make(**overrides: Any) -> Server:
        data_dir = overrides.pop("data_dir", tmp_path / f"solder-{len(started)}")
        worker = overrides.pop("worker", True)
        shortcuts = overrides.pop("shortcuts", True)
        server = Server(settings_for(data_dir, **overrides), worker=worker, shortcuts=shortcuts)
        server.start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def server(make_server: Callable[..., Server]) -> Server:
    return make_server()


class Api(httpx.Client):
    """An HTTP client of one tenant, with the helpers tests keep needing."""

    def create_user(self, username: str, full_name: str | None = None) -> str:
        body: dict[str, Any] = {"username": username}
        if full_name is not None:
            body["fullName"] = full_name
        response = self.post("/users", json=body)
        assert response.status_code == 201, response.text
        user_id: str = response.json()["userId"]
        return user_id

    def create_workflow(self, definition: dict[str, Any]) -> str:
        response = self.post("/workflows", json=definition)
        assert response.status_code == 201, response.text
        workflow_id: str = response.json()["workflowId"]
        return workflow_id

    def activate(self, user_id: str, workflow_id: str) -> None:
        response = self.put(
            "/workflows/activate", json={"userId": user_id, "workflowId": workflow_id}
        )
        assert response.status_code == 200, response.text

    def install(self, definition: dict[str, Any], username: str = "ada") -> tuple[str, str]:
        """A new user with a new workflow activated: their ids."""
        user_id = self.create_user(username)
        workflow_id = self.create_workflow(definition)
        self.activate(user_id, workflow_id)
        return user_id, workflow_id

    def run(self, user_id: str, workflow_id: str, data: dict[str, Any] | None = None) -> str:
        response = self.post(
            "/run/workflow",
            json={"userId": user_id, "workflowId": workflow_id, "data": data or {}},
        )
        assert response.status_code == 200, response.text
        execution_id: str = response.json()["executionId"]
        return execution_id

    def logs(self, workflow_id: str, **params: Any) -> list[dict[str, Any]]:
        response = self.get(f"/workflows/{workflow_id}/logs", params=params)
        assert response.status_code == 200, response.text
        data: list[dict[str, Any]] = response.json()["data"]
        return data

    def wait_for(
        self, workflow_id: str, execution_id: str, timeout: float = TIMEOUT
    ) -> dict[str, Any]:
        """The log of an execution once it has ended."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for log in self.logs(workflow_id, limit=30):
                if log["executionId"] == execution_id and log["stoppedAt"] is not None:
                    return log
            time.sleep(0.05)
        raise AssertionError(f"execution {execution_id} did not end within {timeout} s")


def api_client(server: Server, tenant: str = "acme") -> Api:
    return Api(
        base_url=server.base_url,
        headers={
            "Authorization": f"bearer {server.new_key(tenant)}",
            "x-api-version": "2025-09",
        },
        timeout=TIMEOUT,
    )


@pytest.fixture
def api(server: Server) -> Iterator[Api]:
    with api_client(server) as client:
        yield client


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    with Upstream() as running:
        yield running
