"""The tenant's end users."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from solder.errors import Conflict, NotFound
from solder.ids import OBJECT_ID, iso_ms, now_ms, object_id
from solder.keys import Tenant
from solder.store import queries as q


async def resolve(conn: q.Reader, tenant: Tenant, ref: str) -> Mapping[Any, Any]:
    """The user whose id or username is `ref`."""
    row = None
    if OBJECT_ID.match(ref):
        row = await q.user_by_id(conn, tenant.id, ref)
    if row is None:
        row = await q.user_by_username(conn, tenant.id, ref)
    if row is None:
        raise unknown(ref)
    return row


def unknown(ref: str) -> NotFound:
    return NotFound(f"no user with id or username {ref!r}")


async def create(
    conn: AsyncConnection, tenant: Tenant, username: str, full_name: str | None
) -> str:
    if await q.user_by_username(conn, tenant.id, username) is not None:
        raise Conflict(f"a user with username {username!r} already exists")
    user_id = object_id()
    await q.insert_user(
        conn,
        tenant_id=tenant.id,
        id=user_id,
        username=username,
        full_name=full_name,
        created_at=now_ms(),
    )
    return user_id


async def update(
    conn: AsyncConnection, tenant: Tenant, ref: str, changes: dict[str, Any]
) -> Mapping[Any, Any]:
    user = await resolve(conn, tenant, ref)
    values: dict[str, Any] = {}
    if "username" in changes and changes["username"] != user["username"]:
        if await q.user_by_username(conn, tenant.id, changes["username"]) is not None:
            raise Conflict(f"a user with username {changes['username']!r} already exists")
        values["username"] = changes["username"]
    if "fullName" in changes:
        values["full_name"] = changes["fullName"]
    if values:
        await q.update_user(conn, tenant.id, user["id"], **values)
    return await resolve(conn, tenant, user["id"])


def public(user: Mapping[Any, Any], *, with_created: bool = False) -> dict[str, Any]:
    body = {"userId": user["id"], "username": user["username"], "fullName": user["full_name"]}
    if with_created:
        body["createdAt"] = iso_ms(user["created_at"])
    return body


async def page(
    conn: AsyncConnection, tenant: Tenant, number: int, size: int
) -> list[Mapping[Any, Any]]:
    return list(await q.list_users(conn, tenant.id, limit=size, offset=(number - 1) * size))


async def delete(conn: AsyncConnection, tenant: Tenant, ref: str) -> None:
    """Delete a user with everything of theirs: installations, credentials, execution logs.

    The logs go too: once the user is gone no API call could reach them to erase them.
    """
    user = await resolve(conn, tenant, ref)
    await q.erase_user_logs(conn, tenant.id, user["id"])
    await q.delete_user(conn, tenant.id, user["id"])


async def erase_logs(conn: AsyncConnection, tenant: Tenant, ref: str) -> None:
    """Erase every execution log of a user, irrevocably (the database zeroes freed pages)."""
    user = await resolve(conn, tenant, ref)
    await q.erase_user_logs(conn, tenant.id, user["id"])


async def optional_id(conn: q.Reader, tenant: Tenant, ref: str | None) -> str | None:
    """The id of the user `ref` names, or None when `ref` is absent or empty."""
    if not ref:
        return None
    return str((await resolve(conn, tenant, ref))["id"])
