"""`/retention`: how long the tenant's logs are kept, and each workflow's (Solder's own)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body

from solder import retention, workflows
from solder.api.deps import App, CurrentTenant

router = APIRouter(tags=["retention"])

Days = Annotated[
    Any,
    Body(
        description="`days`: how long logs are kept, in days (fractions allowed), from 1/24 "
        "(one hour) to 3650; `null` inherits (a workflow its tenant's, a tenant the "
        "server's `SOLDER_LOG_RETENTION_DAYS`).",
        examples=[{"days": 30}, {"days": None}],
    ),
]


@router.get("/retention")
async def get_retention(tenant: CurrentTenant, solder: App) -> dict[str, Any]:
    """The tenant's retention, the server's default, and every workflow's own."""
    async with solder.db.read() as conn:
        return await retention.tenant_view(conn, tenant, solder.settings)


@router.put("/retention")
async def set_retention(body: Days, tenant: CurrentTenant, solder: App) -> dict[str, Any]:
    """Set the tenant's retention (`null`: the server's); answers as `GET /retention`."""
    retention_ms = retention.requested_ms(body)
    async with solder.db.write() as conn:
        await retention.set_for_tenant(conn, tenant, retention_ms)
        return await retention.tenant_view(conn, tenant, solder.settings)


@router.get("/workflows/{workflowId}/retention")
async def get_workflow_retention(
    workflowId: str, tenant: CurrentTenant, solder: App
) -> dict[str, Any]:
    """How long the workflow's logs are kept, and whether that is its own retention."""
    async with solder.db.read() as conn:
        workflow = await workflows.resolve(conn, tenant, workflowId)
        return await retention.workflow_view(conn, tenant, workflow, solder.settings)


@router.put("/workflows/{workflowId}/retention")
async def set_workflow_retention(
    workflowId: str, body: Days, tenant: CurrentTenant, solder: App
) -> dict[str, Any]:
    """Set the workflow's retention (`null`: its tenant's); answers as the GET."""
    retention_ms = retention.requested_ms(body)
    async with solder.db.write() as conn:
        workflow = await workflows.resolve(conn, tenant, workflowId)
        await retention.set_for_workflow(conn, tenant, workflow, retention_ms)
        workflow = await workflows.resolve(conn, tenant, workflow["id"])
        return await retention.workflow_view(conn, tenant, workflow, solder.settings)
