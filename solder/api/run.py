"""`/run`: start executions."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from solder import executions
from solder.api.deps import (
    App,
    CurrentTenant,
    IdempotencyKey,
    authenticate,
    bearer_key,
    fingerprinted,
)
from solder.api.errors import error_response
from solder.api.protocol import replay
from solder.api.responses import json_response
from solder.app import Solder
from solder.definitions import check_payload
from solder.errors import InvalidRequest, SolderError, Unavailable
from solder.executions import Idempotency
from solder.ids import OBJECT_ID
from solder.keys import Tenant, hash_key

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
    return await _start_workflow(solder, tenant, idempotency, body)


async def _start_workflow(
    solder: Solder, tenant: Tenant, idempotency: Idempotency | None, body: RunWorkflow
) -> dict[str, Any]:
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
    return await _start_event(solder, tenant, idempotency, body)


async def _start_event(
    solder: Solder, tenant: Tenant, idempotency: Idempotency | None, body: RunEvent
) -> dict[str, Any]:
    check_payload(body.data, "data")
    return await solder.accept(
        tenant,
        idempotency,
        lambda conn: executions.run_event(
            conn, tenant, user_ref=body.userId, event=body.event, data=body.data
        ),
    )


_Start = Callable[[Solder, Tenant, Idempotency | None, Any], Awaitable[dict[str, Any]]]
_SHORTCUTS: dict[str, tuple[type[BaseModel], _Start]] = {
    "/run/workflow": (RunWorkflow, _start_workflow),
    "/run/event": (RunEvent, _start_event),
}


class RunShortcut:
    """A well-formed run request served by the routes' own code straight from the
    middleware stack; any other goes on to the app, whose routes refuse it.

    FastAPI's routing, dependency solving and response validation were about a tenth of
    the server's time a run under load (bench/RESULTS.md, scenario 2), as they were a
    fifth of a logs page's (`LogsShortcut`). Whatever the shortcut would refuse (a body
    that is not JSON or not valid, a missing or unknown key, a bad `Idempotency-Key`) it
    hands on untouched, before anything is written, so that every refusal comes from the
    routes, word for word and in their order of checks. The database unavailable when
    the key is looked up is answered here, as the route answers it (503), rather than
    looked up again; what the routes' code refuses once it runs (an unknown workflow, a
    payload Solder cannot store) comes in the one shape as the routes' errors do.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        shortcut = (
            _SHORTCUTS.get(scope["path"])
            if scope["type"] == "http" and scope["method"] == "POST"
            else None
        )
        if shortcut is None:
            await self.app(scope, receive, send)
            return
        # ProtocolMiddleware, outside, hands the whole body over in one message.
        message = await receive()
        response = None
        if message["type"] == "http.request" and not message.get("more_body", False):
            response = await _answer(Request(scope), message.get("body", b""), *shortcut)
        if response is None:
            await self.app(scope, replay([message], receive), send)
        else:
            await response(scope, receive, send)


async def _answer(
    request: Request, body: bytes, model: type[BaseModel], start: _Start
) -> Response | None:
    """The answer to a run request, or None for one the routes are left to refuse."""
    # JSON said so; without a content type, FastAPI reads the body as JSON or not
    # depending on its version and settings (`strict_content_type`): the routes decide.
    media_type = request.headers.get("content-type", "")
    if media_type.partition(";")[0].strip().lower() != "application/json":
        return None
    try:
        # The standard library's parser, as the routes' (Starlette's): orjson reads an
        # integer past 64 bits as a float, which the routes refuse as too large to store.
        parsed = model.model_validate(json.loads(body))
    except (ValueError, RecursionError, ValidationError):
        return None
    solder: Solder = request.app.state.solder
    if isinstance(parsed, RunWorkflow):
        keyed = await _run_by_key(solder, request, parsed)
        if keyed is not None:
            return keyed
    try:
        tenant = await authenticate(solder, request.headers.get("authorization"))
        key = request.headers.get("idempotency-key")
        idempotency = None if key is None else fingerprinted(key, request, body)
    except Unavailable as error:
        # The route would wait for the database again (its pool's timeout, 5 s) to
        # answer the same: a 503 from its first look, the key's.
        return error_response(error)
    except SolderError:
        return None
    try:
        answer = await start(solder, tenant, idempotency, parsed)
    except SolderError as error:
        return error_response(error)
    return json_response(answer)


async def _run_by_key(solder: Solder, request: Request, body: RunWorkflow) -> Response | None:
    """The usual run request (user and workflow by id, no idempotency key) answered from
    one read of its API key with its target (`executions.run_workflow_by_key`): one
    round trip less than the key's lookup and then the target's. None when the request is
    not of that kind or that read found nothing: `_answer` then goes the usual way, and
    says what is wrong as the routes do."""
    workflow_id = body.workflowId
    if (
        workflow_id is None
        or not OBJECT_ID.match(workflow_id)
        or not OBJECT_ID.match(body.userId)
        or request.headers.get("idempotency-key") is not None
    ):
        return None
    try:
        key = bearer_key(request.headers.get("authorization"))
        check_payload(body.data, "data")
        answer = await solder.accept_by_key(
            hash_key(key), user_id=body.userId, workflow_id=workflow_id, data=body.data
        )
    except Unavailable as error:  # as `_answer` answers it: after one look
        return error_response(error)
    except SolderError:
        return None
    return None if answer is None else json_response(answer)
