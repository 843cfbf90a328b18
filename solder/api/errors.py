"""The one JSON error shape: `{"error": code, "message": text, "status": http status}`."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from solder.api.deps import authenticate
from solder.api.responses import json_response
from solder.errors import (
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    SolderError,
    Unauthorized,
    Unavailable,
)

log = logging.getLogger("solder.api")
PUBLIC_PATHS = ("/health", "/demo/profiles")

_BY_STATUS: dict[int, type[SolderError]] = {
    400: InvalidRequest,
    404: NotFound,
    405: MethodNotAllowed,
    413: PayloadTooLarge,
    503: Unavailable,
}


def error_response(error: SolderError) -> Response:
    return json_response(error.to_json(), status_code=error.status)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"] if p != "body") or "body"
        text = "required" if error["type"] == "missing" else error["msg"]
        if error["type"] == "json_invalid":
            where, text = "body", "is not valid JSON"
        parts.append(f"{where}: {text}")
    return "; ".join(parts)


def install(app: FastAPI) -> None:
    """Render every error, expected or not, in the one shape."""

    @app.exception_handler(SolderError)
    async def _solder(_: Request, exc: SolderError) -> Response:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        # FastAPI validates the body before it runs the auth dependency; the contract
        # wants an unauthenticated request refused as such, whatever its body.
        if request.url.path not in PUBLIC_PATHS:
            try:
                await authenticate(request.app.state.solder, request.headers.get("authorization"))
            except Unauthorized as unauthorized:
                return error_response(unauthorized)
        return error_response(InvalidRequest(_validation_message(exc)))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> Response:
        cls = _BY_STATUS.get(exc.status_code)
        if exc.status_code == 404:
            error: SolderError = NotFound(f"no such endpoint: {request.method} {request.url.path}")
        elif exc.status_code == 405:
            error = MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}")
        elif cls is not None:
            error = cls(str(exc.detail))
        else:
            error = SolderError(str(exc.detail))
        response = error_response(error)
        response.status_code = exc.status_code
        return response

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return error_response(SolderError("internal error; the server log has the details"))
