"""`/users`: the tenant's end users."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from solder import users
from solder.api.deps import App, CurrentTenant, page_and_limit
from solder.api.responses import json_response

router = APIRouter(tags=["users"])


class NewUser(BaseModel):
    model_config = ConfigDict(extra="ignore")
    username: str = Field(min_length=1, max_length=255)
    fullName: str | None = Field(default=None, max_length=255)


class UserChanges(BaseModel):
    model_config = ConfigDict(extra="ignore")
    username: str | None = Field(default=None, min_length=1, max_length=255)
    fullName: str | None = Field(default=None, max_length=255)


@router.post("/users", status_code=201)
async def create_user(body: NewUser, tenant: CurrentTenant, solder: App) -> Response:
    async with solder.db.write() as conn:
        user_id = await users.create(conn, tenant, body.username, body.fullName)
    return json_response({"userId": user_id}, status_code=201)


@router.get("/users")
async def list_users(
    tenant: CurrentTenant, solder: App, page: str | None = None, limit: str | None = None
) -> dict[str, Any]:
    page_number, size = page_and_limit(page, limit, default_limit=100, max_limit=100)
    async with solder.db.read() as conn:
        rows = await users.page(conn, tenant, page_number, size)
    return {"data": [users.public(row, with_created=True) for row in rows]}


@router.get("/users/{userId}")
async def get_user(userId: str, tenant: CurrentTenant, solder: App) -> dict[str, Any]:
    async with solder.db.read() as conn:
        return users.public(await users.resolve(conn, tenant, userId))


@router.put("/users/{userId}")
async def update_user(
    userId: str,
    body: UserChanges,
    tenant: CurrentTenant,
    solder: App,
) -> dict[str, Any]:
    changes = {name: getattr(body, name) for name in body.model_fields_set}
    if changes.get("username") is None:
        changes.pop("username", None)
    async with solder.db.write() as conn:
        return users.public(await users.update(conn, tenant, userId, changes))


@router.delete("/users/{userId}")
async def delete_user(userId: str, tenant: CurrentTenant, solder: App) -> dict[str, Any]:
    async with solder.db.write() as conn:
        await users.delete(conn, tenant, userId)
    return {"message": "Success"}


@router.delete("/users/{userId}/logs")
async def erase_user_logs(userId: str, tenant: CurrentTenant, solder: App) -> dict[str, Any]:
    async with solder.db.write() as conn:
        await users.erase_logs(conn, tenant, userId)
    return {"message": "Success"}
