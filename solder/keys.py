"""API keys: random, shown once, stored as hashes; each belongs to one tenant."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncConnection

from solder.errors import NotFound, Unauthorized
from solder.ids import now_ms, object_id
from solder.store import queries as q

KEY_PREFIX = "sk_"


@dataclass(frozen=True, slots=True)
class Tenant:
    id: str
    name: str


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


async def ensure_tenant(conn: AsyncConnection, name: str) -> Tenant:
    row = await q.tenant_by_name(conn, name)
    if row is not None:
        return Tenant(row["id"], row["name"])
    tenant = Tenant(object_id(), name)
    await q.insert_tenant(conn, id=tenant.id, name=name, created_at=now_ms())
    return tenant


async def create_key(conn: q.Conn, tenant: Tenant) -> tuple[str, str]:
    """A new key for `tenant`: its id and the key itself, which is never stored."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    key_id = object_id()
    await q.insert_api_key(
        conn,
        tenant_id=tenant.id,
        id=key_id,
        prefix=key[:10],
        key_hash=hash_key(key),
        created_at=now_ms(),
    )
    return key_id, key


async def authenticate(conn: q.Reader, key: str) -> Tenant:
    row = await q.tenant_by_key_hash(conn, hash_key(key))
    if row is None:
        raise unknown()
    return Tenant(row["id"], row["name"])


def unknown() -> Unauthorized:
    return Unauthorized("unknown or revoked API key")


async def revoke(conn: AsyncConnection, key_id: str) -> None:
    if not await q.revoke_api_key(conn, key_id, now_ms()):
        raise NotFound(f"no active API key with id {key_id}; `solder keys list` shows them")
