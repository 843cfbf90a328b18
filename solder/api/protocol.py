"""The wire protocol around every request: API version (header or path prefix), body size.

A pure ASGI middleware, so that its errors, like every other, come in the one shape.
"""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from solder import API_VERSION
from solder.api.errors import error_response
from solder.errors import InvalidRequest, PayloadTooLarge, SolderError

# Versions older clients put in the path (`/2023-01/users/...`); they get today's shapes.
PATH_VERSIONS = ("2023-01", "2024-03", API_VERSION)
_PATH_VERSION = re.compile(r"^/(\d{4}-\d{2})(/.*)?$")
_VERSION_HEADER = (b"x-api-version", API_VERSION.encode())


class ProtocolMiddleware:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_version(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), _VERSION_HEADER]
            await send(message)

        try:
            scope = self._versioned(scope)
            receive = await self._bounded(scope, receive)
        except SolderError as error:
            await error_response(error)(scope, receive, send_with_version)
            return
        await self.app(scope, receive, send_with_version)

    def _versioned(self, scope: Scope) -> Scope:
        header = _header(scope, b"x-api-version")
        if header is not None and header != API_VERSION:
            raise InvalidRequest(
                f"unsupported x-api-version {header!r}; supported versions: {API_VERSION}"
            )
        match = _PATH_VERSION.match(scope["path"])
        if match is None:
            return scope
        version, rest = match.group(1), match.group(2) or "/"
        if version not in PATH_VERSIONS:
            raise InvalidRequest(
                f"unsupported API version {version!r} in the path; supported versions: "
                f"{', '.join(PATH_VERSIONS)} (or none, with the x-api-version header)"
            )
        raw_path = scope.get("raw_path")
        return {
            **scope,
            "path": rest,
            "raw_path": raw_path[len(version) + 1 :] if raw_path else None,
        }

    async def _bounded(self, scope: Scope, receive: Receive) -> Receive:
        """A receive that replays the body, once it is known not to exceed the limit."""
        length = _header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            raise self._too_large()
        if scope["method"] in ("GET", "HEAD", "DELETE", "OPTIONS") and length is None:
            return receive
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return replay([message], receive)
            size += len(message.get("body", b""))
            if size > self.max_body_bytes:
                raise self._too_large()
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        return replay([{"type": "http.request", "body": body, "more_body": False}], receive)

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(
            f"request body larger than {self.max_body_bytes} bytes (SOLDER_MAX_BODY_BYTES)"
        )


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def replay(messages: list[Message], then: Receive) -> Receive:
    """Hand out `messages` first, then whatever the client sends next (its disconnect)."""
    pending = list(messages)

    async def receive() -> Message:
        return pending.pop(0) if pending else await then()

    return receive
