"""Which addresses connectors may call (server-side request forgery guard), and the HTTP
client that calls only those."""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from solder import __version__

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Cloud metadata services outside the link-local range (AWS IPv6, Alibaba, Oracle).
_BROADCAST = ipaddress.ip_address("255.255.255.255")
_METADATA = {
    ipaddress.ip_address("fd00:ec2::254"),
    ipaddress.ip_address("100.100.100.200"),
    ipaddress.ip_address("192.0.0.192"),
}


class AddressRefused(Exception):
    """The destination address may not be called."""


class HostNotFound(Exception):
    """The destination host name does not resolve (perhaps only for now)."""


def check_address(address: IPAddress, *, allow_private: bool) -> None:
    """Raise AddressRefused unless `address` may be called."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            check_address(address.ipv4_mapped, allow_private=allow_private)
            return
        # 6to4 and Teredo addresses carry an IPv4 address: it must pass too.
        embedded = address.sixtofour or (address.teredo or (None, None))[1]
        if embedded is not None:
            check_address(embedded, allow_private=allow_private)
    if address == _BROADCAST:
        raise AddressRefused(f"{address} is the broadcast address")
    if address.is_link_local or address in _METADATA:
        raise AddressRefused(f"{address} is a link-local or cloud-metadata address")
    if address.is_multicast or address.is_unspecified:
        raise AddressRefused(f"{address} is not a unicast address")
    if address.is_reserved and not (address.is_loopback or address.is_private):
        raise AddressRefused(f"{address} is a reserved address")
    if not address.is_global and not allow_private:
        raise AddressRefused(
            f"{address} is a loopback or private address; "
            "set SOLDER_HTTP_ALLOW_PRIVATE_NETWORKS=true to allow it"
        )


async def check_host(host: str, port: int, *, allow_private: bool) -> None:
    """Resolve `host` and refuse it if any of its addresses may not be called (for a
    connector that connects by other means than `HttpClient`, which checks by itself)."""
    if check_literal(host, allow_private=allow_private):
        return
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise HostNotFound(f"cannot resolve {host}: {exc.strerror or exc}") from exc
    for info in infos:
        check_address(ipaddress.ip_address(info[4][0]), allow_private=allow_private)


def check_literal(host: str, *, allow_private: bool) -> bool:
    """Check `host` if it is an IP address (raising AddressRefused); False for a name."""
    literal, refused = _literal_verdict(host, allow_private)
    if refused is not None:
        raise AddressRefused(refused)
    return literal


@functools.lru_cache(maxsize=1024)
def _literal_verdict(host: str, allow_private: bool) -> tuple[bool, str | None]:
    """Whether `host` is an IP address, and why it may not be called if it may not.

    Every call checks its host: `ipaddress`'s parsing and its properties (`is_private`
    and the others each test the address against lists of networks) were 2 to 4 % of a
    worker's CPU a run with the `http` block calling an IP address (bench/RESULTS.md).
    The verdicts of the last 1,024 hosts are kept; the rules they follow do not change
    while the process runs."""
    try:
        literal: IPAddress = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False, None
    try:
        check_address(literal, allow_private=allow_private)
    except AddressRefused as exc:
        return True, str(exc)
    return True, None


class CheckedResolver(AbstractResolver):
    """Resolves host names for `HttpClient`, refusing a name if any address may not be called.

    The addresses checked are the ones the client connects to: no second lookup, so a
    name whose DNS answer changes (DNS rebinding) cannot slip an address past the check.
    """

    def __init__(self, *, allow_private: bool) -> None:
        self._inner = ThreadedResolver()
        self._allow_private = allow_private

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        try:
            found = await self._inner.resolve(host, port, family)
        except OSError as exc:
            raise HostNotFound(f"cannot resolve {host}: {exc.strerror or exc}") from exc
        for result in found:
            check_address(ipaddress.ip_address(result["host"]), allow_private=self._allow_private)
        return found

    async def close(self) -> None:
        await self._inner.close()


class HttpFailed(Exception):
    """The request did not get an answer: refused or reset connection, TLS, protocol error."""


class ResponseTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the response is larger than {limit} bytes")
        self.limit = limit


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: Mapping[str, str]
    """Case-insensitive."""
    body: bytes


class HttpClient:
    """The HTTP client that connectors share: keep-alive connections to any API (aiohttp).

    It connects only to addresses that pass `check_address`: an IP address in a URL is
    checked before the request, a host name as it resolves (`CheckedResolver`). Redirects
    are not followed (each hop would need the check again), proxies from the environment
    are not used (a proxy resolves names itself, past the check), cookies are neither kept
    nor sent (the client is every tenant's and every end user's), and certificates are
    verified against the system's store.
    """

    def __init__(self, *, allow_private: bool, connections: int) -> None:
        self._allow_private = allow_private
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        # Made on first use: aiohttp binds a session to the running event loop.
        connector = aiohttp.TCPConnector(
            limit=self._connections,
            resolver=CheckedResolver(allow_private=self._allow_private),
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            # Shared by every tenant and end user: a cookie an API set in answer to one
            # user's call would go with every later call to it, another tenant's too.
            cookie_jar=aiohttp.DummyCookieJar(),
            headers={"User-Agent": f"Solder/{__version__}"},
            # A body the block gives as text goes without a Content-Type it did not set.
            skip_auto_headers=("Content-Type",),
            timeout=aiohttp.ClientTimeout(total=None),
            trust_env=False,
        )
        return self._session

    async def request(
        self,
        method: str,
        url: URL,
        *,
        headers: Mapping[str, str],
        body: bytes | None,
        wait_limit: float,
        limit: int,
    ) -> Response:
        """The answer to one request, its body read up to `limit` bytes (decompressed).

        `wait_limit` (seconds) bounds connecting and each wait for the server's data.
        Raises AddressRefused, HostNotFound, TimeoutError, HttpFailed or ResponseTooLarge.
        """
        assert url.host is not None
        check_literal(url.host, allow_private=self._allow_private)
        session = self._session or self._open()
        try:
            async with session.request(
                method,
                url,
                headers=headers,
                data=body,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=None, connect=wait_limit, sock_read=wait_limit),
            ) as answer:
                if answer.content_length is not None and answer.content_length > limit:
                    raise ResponseTooLarge(limit)
                chunks: list[bytes] = []
                size = 0
                async for chunk in answer.content.iter_any():
                    size += len(chunk)
                    if size > limit:
                        raise ResponseTooLarge(limit)
                    chunks.append(chunk)
                return Response(answer.status, answer.headers, b"".join(chunks))
        except TimeoutError:
            raise  # aiohttp's timeouts are client errors too
        except aiohttp.ClientError as exc:
            raise HttpFailed(str(exc) or type(exc).__name__) from exc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
