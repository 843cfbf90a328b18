"""`/run`: start executions."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from solder import executions
from solder.api.deps import App, CurrentTenant, IdempotencyKey
from solder.definitions import check_payload
from solder.errors import InvalidRequest

router = APIRouter(tags=["run"])


class RunWorkflow(BaseModel):
    model_config = ConfigDict(extra="ignore")
    userId: str = Field(min_length=1)
    workflowId: str | None = None
    workflowName: str | None = None
    data: dict[str, Any] = Field(default_factory=dict, description="The trigger payload.")


@router.post("/run/workflow")
async def run_workflow(
    body: RunWorkflow, tenant: CurrentTenant, solder: App, idempotency: IdempotencyKey
) -> dict[str, Any]:
    """Run a webhook-triggered workflow for a user; answered once the run is durably queued."""
    workflow_ref = body.workflowId or body.workflowName
    if not workflow_ref:
        raise InvalidRequest("workflowId or workflowName is required")
    check_payload(body.data, "data")
    return await solder.accept(
        tenant,
        idempotency,
        lambda conn: executions.run_workflow(
            conn,
            tenant,
            user_ref=body.userId,
            workflow_ref=workflow_ref,
            data=body.data,
        ),
    )


class RunEvent(BaseModel):
    model_config = ConfigDict(extra="ignore")
    event: str = Field(min_length=1, max_length=255, description="The custom event's name.")
    userId: str = Field(min_length=1)
    data: dict[str, Any] = Field(default_factory=dict, description="The trigger payload.")


@router.post("/run/event")
async def run_event(
    body: RunEvent, tenant: CurrentTenant, solder: App, idempotency: IdempotencyKey
) -> dict[str, Any]:
    """Start every active workflow of the user triggered by this event, each with `data`."""
    check_payload(body.data, "data")
    return await solder.accept(
        tenant,
        idempotency,
        lambda conn: executions.run_event(
            conn, tenant, user_ref=body.userId, event=body.event, data=body.data
        ),
    )
