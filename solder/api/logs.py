"""`/workflows/{id}/logs` and what goes with it: reruns, errors, analytics."""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Request
from starlette.datastructures import QueryParams
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from solder import cursors, executions, keys
from solder.api.deps import (
    App,
    CurrentTenant,
    IdempotencyKey,
    bearer_key,
    descending,
    page_and_limit,
)
from solder.api.errors import error_response
from solder.api.responses import raw_json
from solder.app import Solder
from solder.errors import InvalidRequest, SolderError

router = APIRouter(tags=["logs"])


_LOGS_QUERY = {
    "userId": "The user's id or username; all users if absent.",
    "page": "1-based page number (default 1).",
    "limit": "Logs per page, 1 to 30 (default 10).",
    "pageSize": "Alias of limit.",
    "order": "asc or desc by startedAt (default desc).",
    "sortOrder": "Alias of order.",
    "cursor": "Solder's addition: the nextCursor of a previous page, for the page after it "
    "(instead of page; as fast at any depth). nextCursor is null on the last page.",
}


@router.get(
    "/workflows/{workflowId}/logs",
    # The parameters are read from the request by hand: FastAPI's per-parameter
    # validation and dependency solving cost this, the hottest endpoint, about a third
    # of its time (bench/RESULTS.md). The docs still describe them. Requests reach it
    # through `LogsShortcut`; the route is here for the docs and for the app without it.
    openapi_extra={
        "parameters": [
            {"name": name, "in": "query", "required": False, "schema": {"type": "string"}}
            | {"description": description}
            for name, description in _LOGS_QUERY.items()
        ],
        "security": [{"HTTPBearer": []}],
    },
)
async def list_logs(workflowId: str, request: Request) -> Response:
    """The executions of a workflow, newest first, each with its block-by-block log."""
    solder: Solder = request.app.state.solder
    key = bearer_key(request.headers.get("authorization"))
    try:
        page, size, newest_first, after = _paging(request.query_params)
    except InvalidRequest:
        async with solder.db.read_inline() as conn:
            await keys.authenticate(conn, key)  # an unknown key is told so first
        raise
    async with solder.db.read_inline() as conn:
        body = await executions.page_of_logs(
            conn,
            solder.dictionaries,
            key,
            workflowId,
            request.query_params.get("userId"),
            page=page,
            limit=size,
            descending=newest_first,
            cursor=after,
        )
    return raw_json(body)


# What the route above matches (Starlette's `{workflowId}` is `[^/]+` of the decoded path).
_LOGS_PATH = re.compile(r"^/workflows/([^/]+)/logs$")


class LogsShortcut:
    """The logs listing served by `list_logs` straight from the middleware stack.

    FastAPI's routing, route context and exception middleware cost this endpoint, the
    hottest, about a fifth of its time with FastAPI 0.165 (bench/RESULTS.md); the
    handler reads its request by hand and needs none of them. Its errors come in the one
    shape as the router's would: a `SolderError` here, anything else from the server-error
    handler outside. Every other request goes on to the app.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = _LOGS_PATH.match(scope["path"]) if scope["type"] == "http" else None
        if match is None or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        try:
            response = await list_logs(match.group(1), Request(scope, receive))
        except SolderError as error:
            response = error_response(error)
        await response(scope, receive, send)


def _paging(query: QueryParams) -> tuple[int, int, bool, cursors.Cursor | None]:
    """The page number, size, order and cursor a logs request asks for."""
    page, cursor = query.get("page"), query.get("cursor")
    order = query.get("order", query.get("sortOrder"))
    page_number, size = page_and_limit(page, query.get("limit", query.get("pageSize")))
    newest_first = descending(order)
    if cursor is None:
        return page_number, size, newest_first, None
    after = cursors.decode(cursor)
    if page not in (None, ""):  # an empty value means the default, as everywhere
        raise InvalidRequest("use either page or cursor, not both")
    if after.by_user != (query.get("userId") not in (None, "")):
        raise InvalidRequest(
            "this cursor continues a page of "
            + (
                "one user's logs: pass the same userId"
                if after.by_user
                else "all users' logs: leave userId out"
            )
            + ", or start again from page 1"
        )
    if order is not None and newest_first != after.descending:
        raise InvalidRequest(
            "this cursor continues a page in the other order: leave order out with a "
            "cursor, or start again from page 1"
        )
    return page_number, size, after.descending, after


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
            conn,
            tenant,
            solder.dictionaries,
            workflow_ref=workflowId,
            execution_ref=executionId,
            user_ref=userId,
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
