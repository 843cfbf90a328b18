"""Credentials: a user's secrets for other apps, encrypted at rest, used by blocks by name.

A secret is decrypted only inside the engine, for the block that names it, and is never
written back anywhere in clear: not in a log, an error, an API answer or the server's log.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import orjson
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from sqlalchemy.engine import RowMapping
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from solder import users
from solder.connectors import BlockFailed, CredentialLookup
from solder.errors import Conflict, InvalidRequest, NotFound
from solder.ids import iso_ms, now_ms, object_id
from solder.keys import Tenant
from solder.settings import Settings
from solder.store import queries as q
from solder.store.database import Database

log = logging.getLogger("solder.credentials")
KEY_FILE = "secret.key"


class _Data(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Bearer(_Data):
    type: Literal["bearer"]
    token: str = Field(min_length=1)


class Basic(_Data):
    type: Literal["basic"]
    username: str
    password: str = Field(min_length=1)


class ApiKey(_Data):
    type: Literal["apiKey"]
    key: str = Field(min_length=1)
    name: str = Field(min_length=1, max_length=255, description="The header or query parameter.")
    in_: Literal["header", "query"] = Field(alias="in")


Secret = Annotated[Bearer | Basic | ApiKey, Field(discriminator="type")]
_SECRET = TypeAdapter[Bearer | Basic | ApiKey](Secret)
TYPES = ("bearer", "basic", "apiKey")


class Box:
    """Encrypts and decrypts secrets with Fernet; several keys allow rotation."""

    def __init__(self, keys: list[bytes]) -> None:
        self._fernet = MultiFernet([Fernet(key) for key in keys])

    @classmethod
    def from_settings(cls, settings: Settings) -> Box:
        """The keys of SOLDER_SECRET_KEY, or of `<data dir>/secret.key`, made on first use."""
        if settings.secret_key is not None:
            return cls(_split(settings.secret_key.get_secret_value()))
        path = settings.data_dir / KEY_FILE
        if not path.exists():
            _write_new_key(path)
            log.warning(
                "generated a secret key for credentials in %s: back it up with the database, "
                "or set SOLDER_SECRET_KEY (docs/settings.md); without it, stored credentials "
                "cannot be read",
                path,
            )
        return cls(_split(path.read_text()))

    def seal(self, secret: Mapping[str, Any]) -> bytes:
        return self._fernet.encrypt(orjson.dumps(secret))

    def open(self, token: bytes) -> dict[str, Any]:
        try:
            opened: dict[str, Any] = orjson.loads(self._fernet.decrypt(token))
        except InvalidToken:
            raise BlockFailed(
                "a credential cannot be decrypted: it was stored with another "
                "SOLDER_SECRET_KEY than the server's"
            ) from None
        return opened


def _split(keys: str) -> list[bytes]:
    return [key.strip().encode() for key in keys.split(",") if key.strip()]


def _write_new_key(path: Path) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(Fernet.generate_key().decode() + "\n")


def parse_secret(kind: str, data: Any) -> Bearer | Basic | ApiKey:
    """The secret of a new credential, or InvalidRequest naming every problem."""
    if kind not in TYPES:
        raise InvalidRequest(f"type must be one of {', '.join(TYPES)}")
    if not isinstance(data, dict):
        raise InvalidRequest("data must be an object")
    try:
        return _SECRET.validate_python({**data, "type": kind})
    except ValidationError as exc:
        problems = "; ".join(
            f"data.{'.'.join(str(p) for p in e['loc'][1:])}: "
            + ("required" if e["type"] == "missing" else str(e["msg"]))
            for e in exc.errors()
        )
        raise InvalidRequest(f"invalid {kind} credential: {problems}") from None


async def create(
    conn: AsyncConnection, box: Box, tenant: Tenant, user_ref: str, kind: str, name: str, data: Any
) -> str:
    secret = parse_secret(kind, data)
    user = await users.resolve(conn, tenant, user_ref)
    credential_id = object_id()
    try:
        async with conn.begin_nested():
            await q.insert_credential(
                conn,
                tenant_id=tenant.id,
                id=credential_id,
                user_id=user["id"],
                type=kind,
                name=name,
                secret=box.seal(secret.model_dump(by_alias=True)),
                created_at=now_ms(),
            )
    except IntegrityError:
        raise Conflict(f"this user already has a credential named {name!r}") from None
    return credential_id


async def listing(conn: AsyncConnection, tenant: Tenant, user_ref: str) -> list[dict[str, Any]]:
    user = await users.resolve(conn, tenant, user_ref)
    return [_public(row) for row in await q.credentials_of(conn, tenant.id, user["id"])]


async def delete(conn: AsyncConnection, tenant: Tenant, user_ref: str, credential_id: str) -> None:
    user = await users.resolve(conn, tenant, user_ref)
    if not await q.delete_credential(conn, tenant.id, user["id"], credential_id):
        raise NotFound(f"this user has no credential {credential_id!r}")


def lookup(db: Database, box: Box, tenant_id: str, user_id: str) -> CredentialLookup:
    """What the engine gives a block to find the user's credentials by name."""

    async def find(name: str) -> Mapping[str, Any]:
        async with db.read() as conn:
            row = await q.credential_by_name(conn, tenant_id, user_id, name)
        if row is None:
            raise BlockFailed(
                f"the user has no credential named {name!r}; create it with "
                "POST /users/{userId}/credentials"
            )
        return box.open(row["secret"])

    return find


def _public(row: RowMapping) -> dict[str, Any]:
    return {
        "credentialId": row["id"],
        "type": row["type"],
        "name": row["name"],
        "createdAt": iso_ms(row["created_at"]),
    }
