"""Credentials: a user's secrets for other apps, encrypted at rest, used by blocks by name.

A secret is decrypted only inside the engine, for the block that names it, and is never
written back anywhere in clear: not in a log, an error, an API answer or the server's log.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import orjson
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from sqlalchemy.engine import RowMapping
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from solder import users
from solder.connectors import REDACTED, BlockFailed, CredentialLookup
from solder.errors import Conflict, InvalidRequest, NotFound
from solder.ids import iso_ms, now_ms, object_id
from solder.keys import Tenant
from solder.settings import Settings, fernet_keys
from solder.store import queries as q
from solder.store.database import Database

log = logging.getLogger("solder.credentials")
KEY_FILE = "secret.key"
# Refused at creation rather than at run time: the HTTP client's error for a bad header
# value quotes the value in a form (a bytes repr) that scrubbing would not recognise.
_HEADER_VALUE = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _header_value(value: str) -> str:
    if not _HEADER_VALUE.fullmatch(value):
        raise ValueError(
            "must be printable ASCII without leading or trailing spaces (it is sent in an "
            "HTTP header)"
        )
    return value


HeaderValue = Annotated[str, Field(min_length=1), AfterValidator(_header_value)]


class _Data(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Bearer(_Data):
    type: Literal["bearer"]
    token: HeaderValue


class Basic(_Data):
    type: Literal["basic"]
    username: str
    password: str = Field(min_length=1)

    @field_validator("username")
    @classmethod
    def _no_colon(cls, username: str) -> str:
        if ":" in username:  # RFC 7617: the other app would split it at the colon
            raise ValueError("must not contain ':'")
        return username


class ApiKey(_Data):
    type: Literal["apiKey"]
    # `in` first: the checks of `name` and `key` depend on it.
    in_: Literal["header", "query"] = Field(alias="in")
    name: str = Field(min_length=1, max_length=255, description="The header or query parameter.")
    key: str = Field(min_length=1)

    @field_validator("name")
    @classmethod
    def _header_name(cls, name: str, info: ValidationInfo) -> str:
        if info.data.get("in_") == "header" and not _HEADER_NAME.fullmatch(name):
            raise ValueError("must be a valid HTTP header name")
        return name

    @field_validator("key")
    @classmethod
    def _header_key(cls, key: str, info: ValidationInfo) -> str:
        return _header_value(key) if info.data.get("in_") == "header" else key


Secret = Annotated[Bearer | Basic | ApiKey, Field(discriminator="type")]
_SECRET = TypeAdapter[Bearer | Basic | ApiKey](Secret)
TYPES = ("bearer", "basic", "apiKey")


class SecretKeyError(Exception):
    """The secret key file cannot be used."""


class Box:
    """Encrypts and decrypts secrets with Fernet; several keys allow rotation."""

    def __init__(self, keys: list[bytes]) -> None:
        self._fernet = MultiFernet([Fernet(key) for key in keys])

    @classmethod
    def from_settings(cls, settings: Settings) -> Box:
        """The keys of SOLDER_SECRET_KEY, or of `<data dir>/secret.key`, made on first use."""
        if settings.secret_key is not None:
            return cls(fernet_keys(settings.secret_key.get_secret_value()))
        path = settings.data_dir / KEY_FILE
        if _write_new_key(path):
            log.warning(
                "generated a secret key for credentials in %s: back it up with the database, "
                "or set SOLDER_SECRET_KEY (docs/settings.md); without it, stored credentials "
                "cannot be read",
                path,
            )
        try:
            if path.stat().st_mode & 0o077:
                log.warning("%s is open to other users: chmod 600 it", path)
            return cls(fernet_keys(path.read_text()))
        except (OSError, ValueError) as exc:  # ValueError: a bad key, or not UTF-8
            # The message never quotes the file: it may hold a key that is nearly right.
            reason = exc.strerror if isinstance(exc, OSError) else "it holds no valid Fernet key"
            raise SecretKeyError(
                f"cannot use the secret key file {path}: {reason}. Restore it from your "
                "backup, or set SOLDER_SECRET_KEY (docs/settings.md)"
            ) from None

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


def _write_new_key(path: Path) -> bool:
    """Create the key file (0600) unless it exists; True if this call created it."""
    if path.exists():
        return False
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{KEY_FILE}.")  # 0600
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(Fernet.generate_key().decode() + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        # A hard link appears whole and only if the name is free: a crash never leaves a
        # half-written key, and of two processes starting at once only one key wins.
        try:
            os.link(temporary, path)
        except FileExistsError:
            return False
    finally:
        os.unlink(temporary)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the key must outlive a power loss, as the credentials do
    finally:
        os.close(directory)
    return True


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
            + (
                "required"
                if e["type"] == "missing"
                else str(e["msg"]).removeprefix("Value error, ")
            )
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
                f"no credential named {name!r} for this user; create it with "
                "POST /users/{userId}/credentials"
            )
        return box.open(row["secret"])

    return find


def scrub(text: str, secrets: Iterable[str]) -> str:
    """`text` (JSON) with each secret, as JSON escapes it, replaced by [redacted].

    Longest first, so that a derived form (`Bearer <token>`) goes whole rather than
    leaving its prefix around a redacted token. Secrets under 4 characters are kept:
    replacing them would mangle ordinary text and hide next to nothing.

    A secret found outside a string (a password of digits inside a number: an id, a
    timestamp) would leave the text no longer JSON, and the step's log unreadable: then
    the value is redacted value by value instead, a number, `true`, `false` or `null`
    that holds a secret becoming the string [redacted] whole (`_scrub_value`).
    """
    kept = [secret for secret in sorted(set(secrets), key=len, reverse=True) if len(secret) >= 4]
    scrubbed = text
    for secret in kept:
        scrubbed = scrubbed.replace(orjson.dumps(secret).decode()[1:-1], REDACTED)
    if scrubbed == text:
        return text
    try:
        orjson.loads(scrubbed)  # a secret outside a string leaves a bare word: not JSON
    except orjson.JSONDecodeError:
        return orjson.dumps(_scrub_value(orjson.loads(text), kept)).decode()
    return scrubbed


def _scrub_value(value: Any, secrets: list[str]) -> Any:
    """`value` (parsed JSON) with each secret in a string, a key included, replaced by
    [redacted], and any other scalar whose JSON holds a secret replaced by [redacted]."""
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, REDACTED)
        return value
    if isinstance(value, dict):
        return {_scrub_value(k, secrets): _scrub_value(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub_value(item, secrets) for item in value]
    shown = orjson.dumps(value).decode()
    return REDACTED if any(secret in shown for secret in secrets) else value


def _public(row: RowMapping) -> dict[str, Any]:
    return {
        "credentialId": row["id"],
        "type": row["type"],
        "name": row["name"],
        "createdAt": iso_ms(row["created_at"]),
    }
