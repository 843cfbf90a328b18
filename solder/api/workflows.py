"""`/workflows`: definitions, versions and each user's activation."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from solder import users, workflows
from solder.api.deps import App, CurrentTenant
from solder.api.responses import json_response
from solder.errors import InvalidRequest

router = APIRouter(tags=["workflows"])

Definition = Annotated[
    Any,
    Body(
        description="A workflow definition (docs/workflows.md).",
        examples=[
            {
                "name": "Sync new signups",
                "trigger": {"type": "webhook"},
                "blocks": [
                    {
                        "name": "greet",
                        "connector": "transform",
                        "config": {"expression": '{{ "Hello " & trigger.name }}'},
                    }
                ],
            }
        ],
    ),
]


class Activation(BaseModel):
    model_config = ConfigDict(extra="ignore")
    userId: str = Field(min_length=1)
    workflowId: str | None = None
    workflowName: str | None = None

    def workflow_ref(self) -> str:
        ref = self.workflowId or self.workflowName
        if not ref:
            raise InvalidRequest("workflowId or workflowName is required")
        return ref


@router.post("/workflows", status_code=201)
async def create_workflow(definition: Definition, tenant: CurrentTenant, solder: App) -> Response:
    async with solder.db.write() as conn:
        workflow_id, version = await workflows.create(conn, tenant, definition, solder.connectors)
    return json_response({"workflowId": workflow_id, "version": version}, status_code=201)


@router.get("/workflows")
async def list_workflows(
    tenant: CurrentTenant,
    solder: App,
    userId: str | None = None,
) -> dict[str, Any]:
    async with solder.db.read() as conn:
        user_id = await users.optional_id(conn, tenant, userId)
        return {"data": await workflows.listing(conn, tenant, user_id, solder.connectors)}


@router.put("/workflows/activate")
async def activate(body: Activation, tenant: CurrentTenant, solder: App) -> dict[str, Any]:
    async with solder.db.write() as conn:
        user = await users.resolve(conn, tenant, body.userId)
        workflow = await workflows.resolve(conn, tenant, body.workflow_ref())
        await workflows.activate(conn, tenant, workflow, user["id"])
    return {"activated": True}


@router.put("/workflows/deactivate")
async def deactivate(body: Activation, tenant: CurrentTenant, solder: App) -> dict[str, Any]:
    async with solder.db.write() as conn:
        user = await users.resolve(conn, tenant, body.userId)
        workflow = await workflows.resolve(conn, tenant, body.workflow_ref())
        await workflows.deactivate(conn, tenant, workflow, user["id"])
    return {"deactivated": True}


@router.put("/workflows/{workflowId}")
async def replace_workflow(
    workflowId: str,
    definition: Definition,
    tenant: CurrentTenant,
    solder: App,
) -> dict[str, Any]:
    async with solder.db.write() as conn:
        workflow_id, version = await workflows.replace(
            conn, tenant, workflowId, definition, solder.connectors
        )
    return {"workflowId": workflow_id, "version": version}


@router.get("/workflows/{workflowId}")
async def get_workflow(
    workflowId: str,
    tenant: CurrentTenant,
    solder: App,
    userId: str | None = None,
) -> dict[str, Any]:
    async with solder.db.read() as conn:
        workflow = await workflows.resolve(conn, tenant, workflowId)
        user_id = await users.optional_id(conn, tenant, userId)
        return {"data": await workflows.summary(conn, tenant, workflow, user_id, solder.connectors)}


@router.delete("/workflows/{workflowId}")
async def delete_workflow(
    workflowId: str,
    tenant: CurrentTenant,
    solder: App,
    userId: str | None = None,
) -> dict[str, Any]:
    async with solder.db.write() as conn:
        workflow = await workflows.resolve(conn, tenant, workflowId)
        await workflows.delete(
            conn, tenant, workflow, await users.optional_id(conn, tenant, userId)
        )
    return {"deleted": True}


@router.put("/workflows/{workflowId}/upgrade")
async def upgrade(
    workflowId: str,
    tenant: CurrentTenant,
    solder: App,
    userId: str | None = None,
) -> dict[str, Any]:
    if not userId:
        raise InvalidRequest("userId is required")
    async with solder.db.write() as conn:
        workflow = await workflows.resolve(conn, tenant, workflowId)
        user = await users.resolve(conn, tenant, userId)
        await workflows.upgrade(conn, tenant, workflow, user["id"])
    return {"upgraded": True}


@router.get("/workflows/{workflowId}/versions")
async def list_versions(
    workflowId: str,
    tenant: CurrentTenant,
    solder: App,
    userId: str | None = None,
) -> dict[str, Any]:
    async with solder.db.read() as conn:
        workflow = await workflows.resolve(conn, tenant, workflowId)
        await users.optional_id(conn, tenant, userId)
        return {"data": await workflows.versions(conn, tenant, workflow)}


@router.get("/workflows/{workflowId}/users")
async def list_workflow_users(
    workflowId: str,
    tenant: CurrentTenant,
    solder: App,
) -> dict[str, Any]:
    async with solder.db.read() as conn:
        workflow = await workflows.resolve(conn, tenant, workflowId)
        return {"data": await workflows.users_of(conn, tenant, workflow)}
