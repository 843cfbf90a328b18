"""JSON responses serialized with orjson."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response


class OrjsonResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def json_response(content: Any, status_code: int = 200) -> Response:
    return OrjsonResponse(content, status_code=status_code)


def raw_json(body: bytes, status_code: int = 200) -> Response:
    """A response whose body is already serialized JSON."""
    return Response(body, status_code=status_code, media_type="application/json")
