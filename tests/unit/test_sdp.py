"""WebRTC offers checked before any worker sees them: each refusal names its problem."""

from __future__ import annotations

from pathlib import Path

from api.sdp import check_offer

CHROMIUM = (Path(__file__).parent / "data" / "chromium_offer.sdp").read_bytes().decode()


def _without(prefix: str) -> str:
    lines = CHROMIUM.splitlines(keepends=True)
    return "".join(line for line in lines if not line.startswith(prefix))


def test_bad_offers_are_named() -> None:
    """Empty, binary, 70 KB, non-SDP, audio-less, Opus-less and fingerprint-less offers each get
    a detail naming the problem; a real Chromium 156 offer is accepted."""
    assert check_offer(CHROMIUM) is None
    assert check_offer(CHROMIUM.encode()) is None
    audio_only = CHROMIUM.split("m=application")[0]
    assert check_offer(audio_only) is None
    cases: dict[str, bytes | str] = {
        "empty": b"",
        "not UTF-8": b"v=0\r\n\xff\xfe\x00\x01",
        "NUL": "v=0\r\n\x00\x00",
        "exceeds 65536 bytes": CHROMIUM + "a=x-padding:" + "p" * 70_000 + "\r\n",
        "does not start with v=0": "hello\r\n" + CHROMIUM,
        "no audio": CHROMIUM.replace("m=audio", "m=video"),
        "does not offer Opus": _without("a=rtpmap:111 opus"),
        "no a=ice-ufrag": _without("a=ice-ufrag"),
        "no a=ice-pwd": _without("a=ice-pwd"),
        "no a=fingerprint": _without("a=fingerprint"),
    }
    for problem, offer in cases.items():
        detail = check_offer(offer)
        assert detail is not None, problem
        assert problem in detail, (problem, detail)
        assert detail.startswith("sdp: "), detail
