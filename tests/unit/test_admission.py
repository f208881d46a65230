"""INVITE admission decisions: allow list, extension, token buckets, Content-Length."""

from __future__ import annotations

import ipaddress

import pytest

from daemon.ratelimit import KeyedBuckets, TokenBucket
from sip.admission import (
    LOOPBACK,
    Admission,
    Refusal,
    RefusalReport,
    content_length_mismatch,
    host_of,
    parse_networks,
    request_line,
    resolve,
    source_ip,
    uri_user,
)


def _invite(user: str = "1000", body: str = "v=0\r\n", length: int | None = None) -> str:
    declared = len(body.encode()) if length is None else length
    return (
        f"INVITE sip:{user}@127.0.0.1:5062 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999\r\n"
        f"Call-ID: x\r\nContent-Length: {declared}\r\n\r\n{body}"
    )


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    """A bucket of 3 at 2/s gives 3 at once, then one every 0.5 s, and says how long to wait."""
    bucket = TokenBucket.full(capacity=3.0, rate=2.0, now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.5)
    assert bucket.take(0.25) == pytest.approx(0.25)
    assert bucket.take(0.5) == 0.0
    assert bucket.take(10.0) == 0.0  # refilled, but never beyond the burst
    assert bucket.tokens == pytest.approx(2.0)


def test_rate_limiter_keeps_one_bucket_per_source_and_forgets_the_oldest() -> None:
    """Sources do not share a bucket, and at most max_sources buckets are kept."""
    limiter = KeyedBuckets(rate=1.0, burst=1.0, max_keys=2)
    assert limiter.check("a", 0.0) == 0.0
    assert limiter.check("a", 0.0) > 0
    assert limiter.check("b", 0.0) == 0.0
    assert limiter.check("c", 0.0) == 0.0
    assert len(limiter) == 2
    assert limiter.check("a", 0.0) == 0.0  # "a" was forgotten: a fresh bucket


def test_source_addresses_of_pjsip_parse_for_both_families() -> None:
    """pjsip's "ip:port" texts give the IP (IPv4-mapped IPv6 as IPv4); junk gives None."""
    assert source_ip("127.0.0.1:5060") == ipaddress.ip_address("127.0.0.1")
    assert source_ip("[::1]:5060") == ipaddress.ip_address("::1")
    assert source_ip("::ffff:10.0.0.1") == ipaddress.ip_address("10.0.0.1")
    assert source_ip("2001:db8::1") == ipaddress.ip_address("2001:db8::1")
    assert source_ip("nonsense") is None


def test_networks_and_hosts_parse() -> None:
    """Allow-list entries are IPs or networks; a registrar URI gives its host."""
    assert parse_networks(["10.0.0.5", "192.168.1.7/24", "::1"]) == (
        ipaddress.ip_network("10.0.0.5/32"),
        ipaddress.ip_network("192.168.1.0/24"),
        ipaddress.ip_network("::1/128"),
    )
    with pytest.raises(ValueError, match=r"pbx\.example"):
        parse_networks(["pbx.example"])
    assert host_of("sip:pbx.example.com:5060;lr") == "pbx.example.com"
    assert host_of("sip:[2001:db8::5]:5060") == "2001:db8::5"
    assert host_of("sip:user@10.0.0.1") == "10.0.0.1"
    assert host_of("") == ""


def test_names_are_resolved_and_failures_reported_not_raised() -> None:
    """IPs pass as they are, names through the resolver; a name that fails is an error
    string and the others still count."""

    def resolver(host: str) -> list[str]:
        if host == "pbx.example":
            return ["192.0.2.10", "2001:db8::10", "192.0.2.10"]
        raise OSError(-2, "Name or service not known")

    networks, errors = resolve(["10.0.0.1", "pbx.example", "gone.example", ""], resolver)
    assert networks == (
        ipaddress.ip_network("10.0.0.1/32"),
        ipaddress.ip_network("192.0.2.10/32"),
        ipaddress.ip_network("2001:db8::10/128"),
    )
    assert errors == ["gone.example: [Errno -2] Name or service not known"]


def test_user_part_of_the_request_uri() -> None:
    """The user of a SIP URI, %-escapes decoded, without parameters or password."""
    assert uri_user("sip:1000@127.0.0.1:5062") == "1000"
    assert uri_user("sip:%31000@h") == "1000"
    assert uri_user("sip:1000;phone-context=x@h") == "1000"
    assert uri_user("sip:1000:secret@h") == "1000"
    assert uri_user("sip:127.0.0.1") == ""
    assert uri_user("tel:+1555") == ""


def test_content_length_must_match_the_body() -> None:
    """Too long, too short, two that differ or a non-number are mismatches; exact (counted in
    bytes) or absent with no body are not."""
    body = "v=0\r\ns=é\r\n"
    assert not content_length_mismatch(_invite(body=body))
    assert content_length_mismatch(_invite(body=body, length=len(body.encode()) + 40))
    assert content_length_mismatch(_invite(body=body, length=len(body.encode()) - 1))
    assert content_length_mismatch(_invite(body=body, length=len(body)))  # chars, not bytes
    assert not content_length_mismatch("INVITE sip:a@b SIP/2.0\r\nCall-ID: x\r\n\r\n")
    assert content_length_mismatch(
        "INVITE sip:a@b SIP/2.0\r\nl: 5\r\nContent-Length: 4\r\n\r\nabcd"
    )
    assert content_length_mismatch("INVITE sip:a@b SIP/2.0\r\nContent-Length: -1\r\n\r\n")


def test_admission_decides_in_order_and_counts() -> None:
    """Source first (403), then the rate (503 + Retry-After), framing (400), user (404)."""
    admission = Admission("1000", (ipaddress.ip_network("127.0.0.1/32"),), rate=1.0, burst=2.0)
    assert admission.decide("127.0.0.2:5060", _invite(), 0.0) == Refusal(403, "forbidden")
    assert admission.decide("127.0.0.1:5060", _invite(), 0.0) is None
    assert admission.decide("127.0.0.1:5060", _invite(user="100"), 0.0) == Refusal(404, "not_found")
    assert admission.decide("127.0.0.1:5060", _invite(), 0.0) == Refusal(
        503, "rate_limited", retry_after=1
    )
    assert admission.decide("127.0.0.1:5060", _invite(length=99), 5.0) == Refusal(
        400, "bad_request"
    )
    assert admission.refused == {
        "forbidden": 1,
        "not_found": 1,
        "rate_limited": 1,
        "bad_request": 1,
    }


def test_no_rate_limit_at_zero_and_loopback_covers_both_families() -> None:
    """invite_rate 0 never refuses for rate; LOOPBACK takes 127.0.0.0/8 and ::1."""
    admission = Admission("1000", LOOPBACK, rate=0, burst=1)
    assert all(admission.decide("127.0.0.9:1", _invite(), 0.0) is None for _ in range(100))
    assert admission.decide("[::1]:1", _invite(), 0.0) is None
    assert admission.decide("10.0.0.1:1", _invite(), 0.0) == Refusal(403, "forbidden")


def test_request_lines_are_read_as_leniently_as_pjsip_reads_them() -> None:
    """Oddly spaced or framed request lines still give their method and URI; a line with no
    well-formed URI gives the method and an empty URI (so an INVITE is screened, not passed)."""
    uri = "sip:100@h"
    for line in (
        f"INVITE {uri} SIP/2.0 \r\n",
        f"INVITE  {uri}\tSIP/2.0\r\n",
        f"\r\n\r\nINVITE {uri} SIP/2.0\r\n",
        f"INVITE {uri} sip/2.0\r\n",
        f"INVITE {uri} SIP/2.0\nVia: x\n\n",
    ):
        assert request_line(line) == ("INVITE", uri), repr(line)
    assert request_line("INVITE sip:100@h\r\n") == ("INVITE", "")
    assert request_line("SIP/2.0 200 OK\r\n") == ("", "")
    assert request_line("") == ("", "")


def test_lf_framing_and_a_missing_content_length_over_udp() -> None:
    """LF-only messages are checked like CRLF ones; a body without Content-Length (allowed
    over UDP, where the datagram frames it) is no mismatch."""
    body = "v=0\n"
    assert content_length_mismatch(f"INVITE sip:1@h SIP/2.0\nContent-Length: 40\n\n{body}")
    assert not content_length_mismatch(f"INVITE sip:1@h SIP/2.0\nContent-Length: 4\n\n{body}")
    assert not content_length_mismatch(f"INVITE sip:1@h SIP/2.0\r\nVia: x\r\n\r\n{body}")


def test_the_backstop_checks_source_and_extension_without_spending_the_rate() -> None:
    """Admission.backstop refuses a stranger (403) and another extension (404), counts them,
    and takes no token from the source's bucket."""
    admission = Admission("1000", (ipaddress.ip_network("127.0.0.1/32"),), rate=1.0, burst=1.0)
    assert admission.backstop("127.0.0.2:5060", _invite()) == Refusal(403, "forbidden")
    assert admission.backstop("127.0.0.1:5060", _invite(user="100")) == Refusal(404, "not_found")
    assert admission.backstop("127.0.0.1:5060", _invite()) is None
    assert admission.decide("127.0.0.1:5060", _invite(), 0.0) is None  # the token is still there
    assert admission.refused["forbidden"] == admission.refused["not_found"] == 1


def test_refusals_are_reported_first_at_once_then_counted_every_few_seconds() -> None:
    """The first refusal of a reason is reported at once; the next ones within 10 s are only
    counted, and the line after the interval carries their count; reasons are apart."""
    report = RefusalReport(every=10.0)
    assert report.due("forbidden", 0.0) == 1
    assert [report.due("forbidden", t / 10) for t in range(1, 100)] == [0] * 99
    assert report.due("not_found", 5.0) == 1
    assert report.due("forbidden", 10.0) == 100
    assert report.due("forbidden", 10.5) == 0
