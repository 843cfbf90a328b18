"""`http`: calls any REST API and outputs the response body and status code."""

from __future__ import annotations

import re
from typing import Any, Literal

import httpx
import orjson
from pydantic import Field

from solder.connectors import BlockFailed, BlockResult, Connector, ConnectorConfig, RunContext
from solder.network import AddressRefused, HostNotFound, check_host

Method = Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
REDACTED = "[redacted]"
# Headers and query parameters whose values are secrets: never shown in a log's inputs.
_SECRET_HEADERS = {"authorization", "proxy-authorization", "cookie", "x-api-key", "api-key"}
_SECRET_NAME = re.compile(r"(?i)(api[-_]?key|token|secret|password|passwd|signature|auth)")


class HttpConfig(ConnectorConfig):
    method: Method = "GET"
    url: str = Field(min_length=1)
    query: dict[str, Any] = Field(default_factory=dict)
    headers: dict[str, str] = Field(default_factory=dict)
    body: Any = None
    timeoutMs: int | None = Field(default=None, ge=1, le=600_000)


class HttpConnector(Connector):
    name = "http"
    Config = HttpConfig

    def redact(self, resolved: Any) -> Any:
        if not isinstance(resolved, dict):
            return resolved
        shown = dict(resolved)
        if isinstance(shown.get("headers"), dict):
            shown["headers"] = {
                k: REDACTED if _secret_header(k) else v for k, v in shown["headers"].items()
            }
        if isinstance(shown.get("query"), dict):
            shown["query"] = {
                k: REDACTED if _SECRET_NAME.search(k) else v for k, v in shown["query"].items()
            }
        if isinstance(shown.get("url"), str):
            shown["url"] = redact_url(shown["url"])
        return shown

    async def run(self, config: HttpConfig, ctx: RunContext) -> BlockResult:
        try:
            url = httpx.URL(config.url)
        except httpx.InvalidURL as exc:
            raise BlockFailed(f"url is not a valid URL: {exc}") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise BlockFailed(
                f"url must be an absolute http(s) URL, got {redact_url(config.url)!r}"
            )
        try:
            await check_host(
                url.host,
                url.port or (443 if url.scheme == "https" else 80),
                allow_private=ctx.settings.http_allow_private_networks,
            )
        except AddressRefused as exc:
            raise BlockFailed(f"refused to call {url.host}: {exc}") from exc
        except HostNotFound as exc:
            raise BlockFailed(str(exc), retryable=True) from exc
        shown = redact_url(str(url))
        timeout = (config.timeoutMs or ctx.settings.http_timeout_ms) / 1000
        # Merged by hand: httpx replaces a URL's own query string when given `params`.
        url = url.copy_merge_params({k: _query_value(v) for k, v in config.query.items()})
        request = ctx.http.build_request(
            config.method,
            url,
            headers=config.headers,
            content=None if config.body is None else _body(config.body),
            timeout=timeout,
        )
        if config.body is not None and not isinstance(config.body, str | bytes):
            request.headers.setdefault("content-type", "application/json")
        try:
            status, content = await _send(ctx, request, ctx.settings.http_max_response_bytes)
        except httpx.TimeoutException as exc:
            raise BlockFailed(
                f"{config.method} {shown} timed out after {timeout:g} s", retryable=True
            ) from exc
        except httpx.HTTPError as exc:
            raise BlockFailed(f"{config.method} {shown} failed: {exc}", retryable=True) from exc
        except _TooLarge as exc:
            raise BlockFailed(
                f"{config.method} {shown} answered more than {exc.limit} bytes "
                "(SOLDER_HTTP_MAX_RESPONSE_BYTES)",
                app_actions=1,
            ) from None
        item = {"json": _response_body(content), "statusCode": status}
        if status >= 400:
            raise BlockFailed(
                f"{config.method} {shown} answered HTTP {status}",
                items=[item],
                app_actions=1,
                retryable=status == 429 or status >= 500,
            )
        return BlockResult([[item]], app_actions=1)


def _secret_header(name: str) -> bool:
    return name.lower() in _SECRET_HEADERS or bool(_SECRET_NAME.search(name))


def redact_url(url: str) -> str:
    """`url` with user info and the values of secret-looking query parameters hidden."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return REDACTED
    if parsed.userinfo:
        parsed = parsed.copy_with(username=REDACTED, password=None)
    if not parsed.query:
        return str(parsed)
    params = [
        (k, REDACTED if _SECRET_NAME.search(k) else v) for k, v in parsed.params.multi_items()
    ]
    return str(parsed.copy_with(params=params))


def _query_value(value: Any) -> str | list[str]:
    if isinstance(value, list):
        return [_scalar_text(v) for v in value]
    return _scalar_text(value)


def _scalar_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def _body(body: Any) -> bytes:
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode()
    return orjson.dumps(body)


class _TooLarge(Exception):
    def __init__(self, limit: int) -> None:
        self.limit = limit


async def _send(ctx: RunContext, request: httpx.Request, limit: int) -> tuple[int, bytes]:
    """Status and body of the response, reading no more than `limit` bytes of it."""
    response = await ctx.http.send(request, stream=True)
    try:
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > limit:
                raise _TooLarge(limit)
            chunks.append(chunk)
        return response.status_code, b"".join(chunks)
    finally:
        await response.aclose()


def _response_body(content: bytes) -> Any:
    if not content:
        return None
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:
        return content.decode("utf-8", errors="replace")
