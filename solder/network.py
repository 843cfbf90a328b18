"""Which addresses the `http` connector may call (server-side request forgery guard)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket

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
    """Resolve `host` and refuse it if any of its addresses may not be called."""
    try:
        literal: IPAddress | None = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        literal = None
    if literal is not None:
        check_address(literal, allow_private=allow_private)
        return
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise HostNotFound(f"cannot resolve {host}: {exc.strerror or exc}") from exc
    for info in infos:
        check_address(ipaddress.ip_address(info[4][0]), allow_private=allow_private)
