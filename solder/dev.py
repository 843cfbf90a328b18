"""Dev mode (`solder serve --dev`, what `make run` starts): a tenant, a key, a demo workflow."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from solder import API_VERSION, executions, keys, users, workflows
from solder.app import Solder
from solder.errors import NotFound, Unauthorized
from solder.keys import Tenant
from solder.store import queries as q
from solder.store.schema import ENDED

DEV_TENANT = "dev"
DEMO_USER = "demo-user"
DEMO_WORKFLOW = "Demo: look up a signup's profile"
KEY_FILE = "dev-api-key"


def demo_definition(base_url: str) -> dict[str, Any]:
    """Webhook -> http (a profile API the dev server itself serves) -> transform."""
    return {
        "name": DEMO_WORKFLOW,
        "trigger": {"type": "webhook"},
        "blocks": [
            {
                "name": "getProfile",
                "connector": "http",
                "config": {
                    "method": "GET",
                    "url": f"{base_url}/demo/profiles",
                    "query": {"email": "{{ trigger.email }}"},
                },
            },
            {
                "name": "summarize",
                "connector": "transform",
                "config": {
                    "expression": "{{ {'profileId': blocks.getProfile.data.id, "
                    "'greeting': 'Hello ' & blocks.getProfile.data.attributes.first_name} }}"
                },
            },
        ],
    }


async def bootstrap(solder: Solder, base_url: str) -> str:
    """Create what is missing of the dev setup, run the demo if it has no log; a curl line."""
    key_file = solder.settings.data_dir / KEY_FILE
    stored_key = await asyncio.to_thread(_read_key, key_file)
    async with solder.db.write() as conn:
        tenant = await keys.ensure_tenant(conn, DEV_TENANT)
        key = await _dev_key(conn, tenant, stored_key)
        if key != stored_key:
            await asyncio.to_thread(_write_key, key_file, key)
        try:
            user_id = (await users.resolve(conn, tenant, DEMO_USER))["id"]
        except NotFound:
            user_id = await users.create(conn, tenant, DEMO_USER, "Demo User")
        try:
            workflow = await workflows.resolve(conn, tenant, DEMO_WORKFLOW)
        except NotFound:
            await workflows.create(conn, tenant, demo_definition(base_url), solder.connectors)
            workflow = await workflows.resolve(conn, tenant, DEMO_WORKFLOW)
        await workflows.activate(conn, tenant, workflow, user_id)
        has_log = await q.any_execution(conn, tenant.id, workflow["id"])
    if not has_log:
        answer = await solder.accept(
            tenant,
            None,
            lambda conn: executions.run_workflow(
                conn,
                tenant,
                user_ref=user_id,
                workflow_ref=workflow["id"],
                data={"email": "ada@example.com"},
            ),
        )
        await _wait_for(solder, tenant, answer["executionId"])
    return (
        f'curl -s -H "Authorization: bearer {key}" -H "x-api-version: {API_VERSION}" '
        f'"{base_url}/workflows/{workflow["id"]}/logs?userId={user_id}"'
    )


async def _dev_key(conn: q.Conn, tenant: Tenant, stored: str | None) -> str:
    """The dev key kept in the data dir (dev mode only), or a new one if it is gone."""
    if stored:
        try:
            await keys.authenticate(conn, stored)
            return stored
        except Unauthorized:
            pass
    _, key = await keys.create_key(conn, tenant)
    return key


def _read_key(key_file: Path) -> str | None:
    return key_file.read_text().strip() if key_file.exists() else None


def _write_key(key_file: Path, key: str) -> None:
    key_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")


async def _wait_for(solder: Solder, tenant: Tenant, execution_id: str, seconds: float = 30) -> None:
    for _ in range(int(seconds * 10)):
        async with solder.db.read() as conn:
            row = await q.execution(conn, tenant.id, execution_id)
        if row is None or row["status"] in ENDED:
            return
        await asyncio.sleep(0.1)
