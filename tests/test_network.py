"""Which addresses the http connector may call."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from solder.network import AddressRefused, HostNotFound, check_address, check_host, check_literal

ALWAYS_REFUSED = ["169.254.169.254", "169.254.1.1", "fe80::1", "fd00:ec2::254", "100.100.100.200"]
PRIVATE = ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "::1", "fc00::1", "100.64.0.1"]


@pytest.mark.parametrize("address", ALWAYS_REFUSED)
@pytest.mark.parametrize("allow_private", [False, True])
def test_link_local_and_metadata_are_always_refused(address: str, allow_private: bool) -> None:
    with pytest.raises(AddressRefused):
        check_address(ipaddress.ip_address(address), allow_private=allow_private)


@pytest.mark.parametrize("address", PRIVATE)
def test_private_addresses_need_the_setting(address: str) -> None:
    with pytest.raises(AddressRefused, match="SOLDER_HTTP_ALLOW_PRIVATE_NETWORKS"):
        check_address(ipaddress.ip_address(address), allow_private=False)
    check_address(ipaddress.ip_address(address), allow_private=True)


def test_ipv4_mapped_ipv6_is_checked_as_ipv4() -> None:
    with pytest.raises(AddressRefused):
        check_address(ipaddress.ip_address("::ffff:169.254.169.254"), allow_private=True)


def test_public_addresses_pass() -> None:
    check_address(ipaddress.ip_address("93.184.216.34"), allow_private=False)


def test_a_name_is_checked_by_what_it_resolves_to() -> None:
    with pytest.raises(AddressRefused, match="loopback or private"):
        asyncio.run(check_host("localhost", 80, allow_private=False))
    asyncio.run(check_host("localhost", 80, allow_private=True))


@pytest.mark.parametrize(
    "address",
    [
        "2002:7f00:1::1",
        "2002:a9fe:a9fe::1",
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",
        "::ffff:10.0.0.1",
    ],
)
def test_ipv6_forms_embedding_a_private_ipv4_are_refused(address: str) -> None:
    with pytest.raises(AddressRefused):
        check_address(ipaddress.ip_address(address), allow_private=False)


def test_broadcast_is_refused_even_with_private_networks_allowed() -> None:
    with pytest.raises(AddressRefused, match="broadcast"):
        check_address(ipaddress.ip_address("255.255.255.255"), allow_private=True)


def test_a_name_that_does_not_resolve_is_not_an_address_refusal() -> None:
    with pytest.raises(HostNotFound):
        asyncio.run(check_host("no-such-host.invalid", 80, allow_private=False))


@pytest.mark.parametrize("address", ["10.1.2.3", "[::1]", "169.254.169.254"])
def test_a_literal_is_refused_on_every_call_and_by_its_own_setting(address: str) -> None:
    """Verdicts are kept per host and setting: a refusal is raised each time, with the
    same message, and a private address allowed with the setting is still refused
    without it."""
    refusals = []
    for _ in range(3):
        with pytest.raises(AddressRefused) as refused:
            check_literal(address, allow_private=False)
        refusals.append(str(refused.value))
    assert len(set(refusals)) == 1
    if address != "169.254.169.254":
        assert check_literal(address, allow_private=True) is True
        with pytest.raises(AddressRefused):
            check_literal(address, allow_private=False)
    assert check_literal("api.example.com", allow_private=False) is False
