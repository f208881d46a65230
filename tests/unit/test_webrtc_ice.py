"""Which addresses a browser call offers as ICE host candidates ([web] ice_addresses)."""

from __future__ import annotations

from collections.abc import Iterator

import aioice.ice
import pytest

from daemon.legs.webrtc import host_addresses, use_ice_addresses


@pytest.fixture(autouse=True)
def reset() -> Iterator[None]:
    yield
    use_ice_addresses([])


def test_ice_addresses_are_the_configured_ones_else_the_hosts_plus_loopback() -> None:
    """Set addresses are offered alone (by family); none set gives the host's addresses plus
    127.0.0.1, which aioice itself never offers; a name is refused."""
    assert aioice.ice.get_host_addresses is host_addresses
    default = host_addresses(use_ipv4=True, use_ipv6=False)
    assert "127.0.0.1" in default
    use_ice_addresses(["127.0.0.1", "::1"])
    assert host_addresses(use_ipv4=True, use_ipv6=False) == ["127.0.0.1"]
    assert host_addresses(use_ipv4=True, use_ipv6=True) == ["127.0.0.1", "::1"]
    with pytest.raises(ValueError, match="does not appear to be an IPv4 or IPv6 address"):
        use_ice_addresses(["localhost"])
