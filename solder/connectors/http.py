"""`http`: calls any REST API and outputs the response body and status code."""

from __future__ import annotations

import base64
import email.utils
import re
import time
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import urlencode

import orjson
from pydantic import Field
from yarl import URL

from solder.connectors import (
    REDACTED,
    BlockFailed,
    BlockResult,
    Connector,
    ConnectorConfig,
    RunContext,
)
from solder.network import AddressRefused, HostNotFound, HttpFailed, ResponseTooLarge

Method = Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
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
    credential: str | None = Field(default=None, min_length=1, description="A credential's name.")


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
            url = URL(config.url)
        except ValueError as exc:
            raise BlockFailed(f"url is not a valid URL: {exc}") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise BlockFailed(
                f"url must be an absolute http(s) URL, got {redact_url(config.url)!r}"
            )
        timeout = (config.timeoutMs or ctx.settings.http_timeout_ms) / 1000
        headers = dict(config.headers)
        params = {k: _query_value(v) for k, v in config.query.items()}
        if config.credential is not None:
            authorize(await ctx.credential(config.credential), headers, params, ctx.secrets)
        url = with_params(url, params)
        body = None if config.body is None else _body(config.body)
        typed = any(name.lower() == "content-type" for name in headers)
        if body is not None and not isinstance(config.body, str | bytes) and not typed:
            headers["Content-Type"] = "application/json"
        try:
            answer = await ctx.http.request(
                config.method,
                url,
                headers=headers,
                body=body,
                wait_limit=timeout,
                limit=ctx.settings.http_max_response_bytes,
            )
        except AddressRefused as exc:
            raise BlockFailed(f"refused to call {url.host}: {exc}") from exc
        except HostNotFound as exc:
            raise BlockFailed(str(exc), retryable=True) from exc
        except TimeoutError as exc:
            raise BlockFailed(
                f"{_called(config, url)} timed out after {timeout:g} s", retryable=True
            ) from exc
        except HttpFailed as exc:
            raise BlockFailed(f"{_called(config, url)} failed: {exc}", retryable=True) from exc
        except ResponseTooLarge as exc:
            raise BlockFailed(
                f"{_called(config, url)} answered more than {exc.limit} bytes "
                "(SOLDER_HTTP_MAX_RESPONSE_BYTES)",
                app_actions=1,
            ) from None
        status = answer.status
        item = {"json": _response_body(answer.body), "statusCode": status}
        if status >= 400:
            raise BlockFailed(
                f"{_called(config, url)} answered HTTP {status}",
                items=[item],
                app_actions=1,
                retryable=status == 429 or status >= 500,
                retry_after_ms=retry_after_ms(answer.headers) if status in (429, 503) else None,
            )
        return BlockResult([[item]], app_actions=1)


def _called(config: HttpConfig, url: URL) -> str:
    """The request as an error message names it (made only for one: 7 µs a call)."""
    return f"{config.method} {redact_url(str(url))}"


def with_params(url: URL, params: Mapping[str, str | list[str]]) -> URL:
    """`url` with `params` added to its own query string, encoded as HTML forms do."""
    if not params:
        return url
    extra = urlencode(params, doseq=True)
    own = url.raw_query_string
    base = str(url.with_query(None).with_fragment(None))
    return URL(f"{base}?{own}&{extra}" if own else f"{base}?{extra}", encoded=True)


def authorize(
    credential: Mapping[str, Any],
    headers: dict[str, str],
    params: dict[str, str | list[str]],
    secrets: set[str],
) -> None:
    """Put a credential where its type says, and note every form of its secret."""
    kind = credential.get("type")
    if kind == "bearer":
        value = f"Bearer {credential['token']}"
        headers["Authorization"] = value
        secrets.update((credential["token"], value))
    elif kind == "basic":
        pair = f"{credential['username']}:{credential['password']}"
        encoded = base64.b64encode(pair.encode()).decode()
        headers["Authorization"] = f"Basic {encoded}"
        secrets.update((credential["password"], pair, encoded, f"Basic {encoded}"))
    elif kind == "apiKey":
        if credential["in"] == "header":
            headers[credential["name"]] = credential["key"]
        else:
            params[credential["name"]] = credential["key"]
            # As it travels in the URL, which the other app's error pages like to quote.
            secrets.add(urlencode({"k": credential["key"]})[2:])
        secrets.add(credential["key"])
    else:
        raise BlockFailed(f"the http connector cannot use a {kind!r} credential")


def retry_after_ms(headers: Mapping[str, str]) -> int | None:
    """A `Retry-After` header (seconds, or an HTTP date) in milliseconds."""
    value = headers.get("retry-after")
    if value is None:
        return None
    if value.strip().isdigit():
        return int(value) * 1000
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0, int((when.timestamp() - time.time()) * 1000))


def _secret_header(name: str) -> bool:
    return name.lower() in _SECRET_HEADERS or bool(_SECRET_NAME.search(name))


def redact_url(url: str) -> str:
    """`url` for people to read, its user info and secret-looking query values hidden."""
    try:
        parsed = URL(url)
    except ValueError:
        return REDACTED
    if parsed.user is not None or parsed.password is not None:
        parsed = parsed.with_user(REDACTED).with_password(None)
    if parsed.raw_query_string:
        parsed = parsed.with_query(
            [(k, REDACTED if _SECRET_NAME.search(k) else v) for k, v in parsed.query.items()]
        )
    return parsed.human_repr()


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


def _response_body(content: bytes) -> Any:
    if not content:
        return None
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:
        return content.decode("utf-8", errors="replace")
