"""`/workflows/{id}/logs` and what goes with it: reruns, errors, analytics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query
from starlette.responses import Response

from solder import executions
from solder.api.deps import App, CurrentTenant, IdempotencyKey, descending, page_and_limit
from solder.api.responses import raw_json

router = APIRouter(tags=["logs"])


@router.get("/workflows/{workflowId}/logs")
async def list_logs(
    workflowId: str,
    tenant: CurrentTenant,
    solder: App,
    userId: str | None = Query(None, description="The user's id or username; all users if absent."),
    page: str | None = Query(None, description="1-based page number (default 1)."),
    limit: str | None = Query(None, description="Logs per page, 1 to 30 (default 10)."),
    pageSize: str | None = Query(None, description="Alias of limit."),
    order: str | None = Query(None, description="asc or desc by startedAt (default desc)."),
    sortOrder: str | None = Query(None, description="Alias of order."),
) -> Response:
    """The executions of a workflow, newest first, each with its block-by-block log."""
    page_number, size = page_and_limit(page, limit if limit is not None else pageSize)
    body = await executions.page_of_logs(
        solder.db,
        tenant,
        workflowId,
        userId,
        page=page_number,
        limit=size,
        descending=descending(order if order is not None else sortOrder),
    )
    return raw_json(body)


@router.post("/workflows/{workflowId}/rerun/{executionId}")
async def rerun(
    workflowId: str,
    executionId: str,
    tenant: CurrentTenant,
    solder: App,
    idempotency: IdempotencyKey,
    userId: str | None = None,
) -> dict[str, Any]:
    """Run an execution again, as a new execution with the same trigger data."""
    return await solder.accept(
        tenant,
        idempotency,
        lambda conn: executions.rerun(
            conn, tenant, workflow_ref=workflowId, execution_ref=executionId, user_ref=userId
        ),
    )


@router.get("/workflows/{workflowId}/errors")
async def list_errors(
    workflowId: str,
    tenant: CurrentTenant,
    solder: App,
    userId: str | None = None,
    page: str | None = None,
    limit: str | None = None,
) -> dict[str, Any]:
    """Failed executions, newest first."""
    page_number, size = page_and_limit(page, limit, default_limit=30, max_limit=100)
    return await executions.errors(
        solder.db, tenant, workflowId, userId, page=page_number, limit=size
    )


@router.get("/workflows/{workflowId}/analytics")
async def analytics(
    workflowId: str,
    tenant: CurrentTenant,
    solder: App,
    userId: str | None = None,
) -> dict[str, Any]:
    """How many times the workflow ran, failed, and called other apps."""
    return await executions.analytics(solder.db, tenant, workflowId, userId)
