"""`/users/{userId}/credentials`: a user's secrets for other apps (never answered back)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from solder import credentials
from solder.api.deps import App, CurrentTenant
from solder.api.responses import json_response

router = APIRouter(tags=["credentials"])


class NewCredential(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str = Field(description="bearer, basic or apiKey.")
    name: str = Field(min_length=1, max_length=255, description="How blocks refer to it.")
    data: Any = Field(
        description='The secret: bearer {"token"}; basic {"username", "password"}; '
        'apiKey {"key", "in": "header" | "query", "name"}.'
    )


@router.post("/users/{userId}/credentials", status_code=201)
async def create_credential(
    userId: str,
    body: NewCredential,
    tenant: CurrentTenant,
    solder: App,
) -> Response:
    async with solder.db.write() as conn:
        credential_id = await credentials.create(
            conn, solder.box, tenant, userId, body.type, body.name, body.data
        )
    return json_response({"credentialId": credential_id}, status_code=201)


@router.get("/users/{userId}/credentials")
async def list_credentials(
    userId: str,
    tenant: CurrentTenant,
    solder: App,
) -> dict[str, Any]:
    async with solder.db.read() as conn:
        return {"data": await credentials.listing(conn, tenant, userId)}


@router.delete("/users/{userId}/credentials/{credentialId}")
async def delete_credential(
    userId: str,
    credentialId: str,
    tenant: CurrentTenant,
    solder: App,
) -> dict[str, Any]:
    async with solder.db.write() as conn:
        await credentials.delete(conn, tenant, userId, credentialId)
    return {"message": "Success"}
