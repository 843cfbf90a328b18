"""What handlers depend on: the running Solder, the caller's tenant, paging parameters."""

from __future__ import annotations

import hashlib
from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from solder import keys
from solder.app import Solder
from solder.errors import InvalidRequest, Unauthorized
from solder.executions import Idempotency
from solder.keys import Tenant

# Keeps the row offset a page implies within a 64-bit integer, as databases need it.
MAX_PAGE = 1_000_000_000

_bearer = HTTPBearer(auto_error=False, description="An API key from `solder keys create`.")


async def get_solder(request: Request) -> Solder:
    # async: FastAPI runs a plain `def` dependency in its thread pool, on every request.
    solder: Solder = request.app.state.solder
    return solder


App = Annotated[Solder, Depends(get_solder)]


def bearer_key(authorization: str | None) -> str:
    """The API key in an `Authorization: bearer <key>` header."""
    scheme, _, key = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized("missing API key: send the header `Authorization: bearer <API key>`")
    return key.strip()


async def authenticate(solder: Solder, authorization: str | None) -> Tenant:
    """The tenant whose API key is in an `Authorization: bearer <key>` header."""
    key = bearer_key(authorization)
    async with solder.db.read_inline() as conn:
        return await keys.authenticate(conn, key)


async def get_tenant(
    request: Request,
    solder: App,
    _: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],  # for the docs
) -> Tenant:
    return await authenticate(solder, request.headers.get("authorization"))


CurrentTenant = Annotated[Tenant, Depends(get_tenant)]


async def get_idempotency(
    request: Request,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> Idempotency | None:
    """The `Idempotency-Key` header with a fingerprint of the request it came with."""
    if idempotency_key is None:
        return None
    return fingerprinted(idempotency_key, request, await request.body())


def fingerprinted(idempotency_key: str, request: Request, body: bytes) -> Idempotency:
    """An idempotency key with the fingerprint of its request: its method, URL and body."""
    if not 1 <= len(idempotency_key) <= 255:
        raise InvalidRequest("Idempotency-Key must be 1 to 255 characters")
    fingerprint = hashlib.sha256()
    fingerprint.update(f"{request.method} {request.url.path}?{request.url.query}\n".encode())
    fingerprint.update(body)
    return Idempotency(idempotency_key, fingerprint.hexdigest())


IdempotencyKey = Annotated[Idempotency | None, Depends(get_idempotency)]


def page_and_limit(
    page: str | None, limit: str | None, *, default_limit: int = 10, max_limit: int = 30
) -> tuple[int, int]:
    """Parse 1-based `page` and `limit`, refusing anything outside their bounds."""
    page_number = _integer("page", page, 1)
    if not 1 <= page_number <= MAX_PAGE:
        raise InvalidRequest(f"page must be an integer from 1 to {MAX_PAGE}")
    size = _integer("limit", limit, default_limit)
    if not 1 <= size <= max_limit:
        raise InvalidRequest(f"limit must be between 1 and {max_limit}")
    return page_number, size


def descending(order: str | None) -> bool:
    if order is None or order == "":
        return True
    if order.lower() not in ("asc", "desc"):
        raise InvalidRequest("order must be asc or desc")
    return order.lower() == "desc"


def _integer(name: str, raw: str | None, default: int) -> int:
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise InvalidRequest(f"{name} must be an integer, got {raw!r}") from None
