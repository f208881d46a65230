"""Which addresses a browser call offers as ICE host candidates ([web] ice_addresses), and
how long it keeps a peer that stopped answering ICE consent checks ([web] consent_seconds)."""

from __future__ import annotations

from collections.abc import Iterator

import aioice.ice
import pytest

from daemon.legs.webrtc import (
    CONSENT_FAILURES,
    CONSENT_SECONDS,
    consent_bounds,
    host_addresses,
    use_consent,
    use_ice_addresses,
)


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


def test_consent_settings_reach_the_aioice_globals_its_consent_check_reads() -> None:
    """use_consent writes aioice's CONSENT_INTERVAL and CONSENT_FAILURES, and aioice's
    query_consent reads those very globals, so a rename in aioice fails here instead of
    silently leaving its 30 s default."""
    read = set(aioice.ice.Connection.query_consent.__code__.co_names)
    assert {"CONSENT_INTERVAL", "CONSENT_FAILURES"} <= read, sorted(read)
    try:
        use_consent(4.0)
        assert aioice.ice.CONSENT_INTERVAL == 4.0 / CONSENT_FAILURES
        assert aioice.ice.CONSENT_FAILURES == CONSENT_FAILURES
    finally:
        use_consent(CONSENT_SECONDS)
    assert aioice.ice.CONSENT_INTERVAL == CONSENT_SECONDS / CONSENT_FAILURES
    shortest, longest = consent_bounds(CONSENT_SECONDS)
    print(f"default consent: ends {shortest:.1f}-{longest:.1f} s after the peer's last answer")
    assert (round(shortest, 1), round(longest, 1)) == (8.9, 14.5), (shortest, longest)
    with pytest.raises(ValueError, match="positive"):
        use_consent(0)
