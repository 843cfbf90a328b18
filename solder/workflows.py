"""Workflows: versioned definitions, and each user's installation of them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from solder import definitions
from solder.connectors import Connector
from solder.definitions import Definition
from solder.errors import Conflict, NotFound
from solder.ids import OBJECT_ID, iso_ms, now_ms, object_id
from solder.keys import Tenant
from solder.store import queries as q


async def resolve(conn: q.Reader, tenant: Tenant, ref: str) -> Mapping[Any, Any]:
    """The workflow whose id (or, failing that, name) is `ref`."""
    row = None
    if OBJECT_ID.match(ref):
        row = await q.workflow_by_id(conn, tenant.id, ref)
    if row is None:
        row = await q.workflow_by_name(conn, tenant.id, ref)
    if row is None:
        raise unknown(ref)
    return row


def unknown(ref: str) -> NotFound:
    return NotFound(f"no workflow with id or name {ref!r}")


async def definition(
    conn: AsyncConnection,
    tenant: Tenant,
    workflow_id: str,
    version: int,
    connectors: Mapping[str, Connector],
) -> Definition:
    row = await q.workflow_version(conn, tenant.id, workflow_id, version)
    if row is None:
        raise NotFound(f"workflow {workflow_id} has no version {version}")
    return definitions.from_document(orjson.loads(row["definition"]), connectors)


def trigger_id(stored_definition: str) -> str:
    """The trigger's id in a stored definition document (stored documents always hold it)."""
    document = orjson.loads(stored_definition)
    trigger: str = document["trigger"]["id"]
    return trigger


async def create(
    conn: AsyncConnection, tenant: Tenant, raw: Any, connectors: Mapping[str, Connector]
) -> tuple[str, int]:
    parsed = definitions.parse(raw, connectors)
    if await q.workflow_by_name(conn, tenant.id, parsed.name) is not None:
        raise Conflict(f"a workflow named {parsed.name!r} already exists; PUT it to change it")
    workflow_id = object_id()
    now = now_ms()
    await q.insert_workflow(
        conn,
        tenant_id=tenant.id,
        id=workflow_id,
        name=parsed.name,
        latest_version=1,
        trigger_type=parsed.trigger.type,
        created_at=now,
        updated_at=now,
    )
    await _insert_version(conn, tenant, workflow_id, 1, parsed, now)
    return workflow_id, 1


async def replace(
    conn: AsyncConnection,
    tenant: Tenant,
    ref: str,
    raw: Any,
    connectors: Mapping[str, Connector],
) -> tuple[str, int]:
    """Store `raw` as the workflow's next version."""
    workflow = await resolve(conn, tenant, ref)
    latest = await definition(conn, tenant, workflow["id"], workflow["latest_version"], connectors)
    parsed = definitions.parse(raw, connectors, previous=latest)
    if parsed.name != workflow["name"]:
        other = await q.workflow_by_name(conn, tenant.id, parsed.name)
        if other is not None:
            raise Conflict(f"another workflow is named {parsed.name!r}")
    version = workflow["latest_version"] + 1
    now = now_ms()
    await q.update_workflow(
        conn,
        tenant.id,
        workflow["id"],
        name=parsed.name,
        latest_version=version,
        trigger_type=parsed.trigger.type,
        updated_at=now,
    )
    await _insert_version(conn, tenant, workflow["id"], version, parsed, now)
    return workflow["id"], version


async def _insert_version(
    conn: AsyncConnection,
    tenant: Tenant,
    workflow_id: str,
    version: int,
    parsed: Definition,
    now: int,
) -> None:
    await q.insert_version(
        conn,
        tenant_id=tenant.id,
        workflow_id=workflow_id,
        version=version,
        definition=orjson.dumps(parsed.document).decode(),
        created_at=now,
        trigger_type=parsed.trigger.type,
        trigger_event=parsed.trigger.event,
        trigger_cron=parsed.trigger.cron,
    )


async def activate(
    conn: AsyncConnection, tenant: Tenant, workflow: Mapping[Any, Any], user_id: str
) -> None:
    """Install the workflow for the user (at its latest version) if needed, and activate it.

    A schedule counts its ticks from activation: the first run is at the first tick
    after it, and ticks that passed while the installation was inactive never run.
    """
    now = now_ms()
    current = await q.installation(conn, tenant.id, workflow["id"], user_id)
    if current is None:
        await q.insert_installation(
            conn,
            tenant_id=tenant.id,
            workflow_id=workflow["id"],
            user_id=user_id,
            version=workflow["latest_version"],
            active=True,
            installed_at=now,
            updated_at=now,
            last_tick_at=now,
        )
    elif not current["active"]:
        await q.update_installation(
            conn, tenant.id, workflow["id"], user_id, active=True, updated_at=now, last_tick_at=now
        )


async def deactivate(
    conn: AsyncConnection, tenant: Tenant, workflow: Mapping[Any, Any], user_id: str
) -> None:
    if await q.installation(conn, tenant.id, workflow["id"], user_id) is not None:
        await q.update_installation(
            conn, tenant.id, workflow["id"], user_id, active=False, updated_at=now_ms()
        )


async def upgrade(
    conn: AsyncConnection, tenant: Tenant, workflow: Mapping[Any, Any], user_id: str
) -> None:
    current = await q.installation(conn, tenant.id, workflow["id"], user_id)
    if current is None:
        raise NotFound("the workflow is not installed for this user; activate it first")
    now = now_ms()
    values: dict[str, Any] = {"version": workflow["latest_version"], "updated_at": now}
    if current["version"] != workflow["latest_version"]:
        # A new version's schedule starts afresh: its first run is at its first tick from now.
        values["last_tick_at"] = now
    await q.update_installation(conn, tenant.id, workflow["id"], user_id, **values)


async def summary(
    conn: AsyncConnection,
    tenant: Tenant,
    workflow: Mapping[Any, Any],
    user_id: str | None,
    connectors: Mapping[str, Connector],
) -> dict[str, Any]:
    """A workflow as `GET /workflows` lists it, for one user when `user_id` is given."""
    installed = None
    if user_id is not None:
        installed = await q.installation(conn, tenant.id, workflow["id"], user_id)
    version = installed["version"] if installed else workflow["latest_version"]
    parsed = await definition(conn, tenant, workflow["id"], version, connectors)
    blocks = [{"id": parsed.trigger.id, "name": "trigger", "type": parsed.trigger.type}]
    blocks += [{"id": b.id, "name": b.name, "type": b.connector} for b in parsed.blocks]
    return {
        "workflowId": workflow["id"],
        "name": workflow["name"],
        "version": workflow["latest_version"],
        "installedVersion": installed["version"] if installed else None,
        "active": bool(installed and installed["active"]),
        "createdAt": iso_ms(workflow["created_at"]),
        "updatedAt": iso_ms(workflow["updated_at"]),
        "blocks": blocks,
        "definition": parsed.document,
    }


async def listing(
    conn: AsyncConnection,
    tenant: Tenant,
    user_id: str | None,
    connectors: Mapping[str, Connector],
) -> list[dict[str, Any]]:
    return [
        await summary(conn, tenant, workflow, user_id, connectors)
        for workflow in await q.list_workflows(conn, tenant.id)
    ]


async def delete(
    conn: AsyncConnection, tenant: Tenant, workflow: Mapping[Any, Any], user_id: str | None
) -> None:
    """Uninstall the workflow for one user or, without a user, delete it with its logs."""
    if user_id is None:
        await q.delete_workflow(conn, tenant.id, workflow["id"])
    elif not await q.delete_installation(conn, tenant.id, workflow["id"], user_id):
        raise NotFound("the workflow is not installed for this user")


async def versions(
    conn: AsyncConnection, tenant: Tenant, workflow: Mapping[Any, Any]
) -> list[dict[str, Any]]:
    return [
        {"version": row["version"], "createdAt": iso_ms(row["created_at"])}
        for row in await q.list_versions(conn, tenant.id, workflow["id"])
    ]


async def users_of(
    conn: AsyncConnection, tenant: Tenant, workflow: Mapping[Any, Any]
) -> list[dict[str, Any]]:
    return [
        {
            "userId": row["id"],
            "username": row["username"],
            "fullName": row["full_name"],
            "workflowActive": bool(row["active"]),
            "installedVersion": row["version"],
            "installedAt": iso_ms(row["installed_at"]),
        }
        for row in await q.workflow_users(conn, tenant.id, workflow["id"])
    ]
