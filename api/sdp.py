"""The checks a WebRTC offer passes before it goes to a web worker. Pure: no I/O.

:func:`check_offer` answers why an offer cannot be answered, or None. It catches what a
browser never sends (not text, too long, not SDP, no audio, no Opus, no ICE credentials, no
DTLS fingerprint), so garbage is a 400 naming the problem here rather than a failure deep in
the WebRTC stack; the stack's own parser still judges what passes.
"""

from __future__ import annotations

import re

MAX_OFFER_BYTES = 65536

_OPUS = re.compile(r"^a=rtpmap:\d+ opus/48000(/2)?\s*$", re.IGNORECASE | re.MULTILINE)


def _attribute(lines: list[str], name: str) -> bool:
    return any(line.startswith(f"a={name}:") and line[len(name) + 3 :].strip() for line in lines)


def _text(offer: bytes) -> str:
    """The offer as text; ValueError naming why it is not."""
    if not offer.strip():
        raise ValueError("sdp: the offer is empty")
    if len(offer) > MAX_OFFER_BYTES:
        raise ValueError(f"sdp: the offer exceeds {MAX_OFFER_BYTES} bytes")
    try:
        text = offer.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("sdp: the offer is not UTF-8 text") from None
    if "\x00" in text:
        raise ValueError("sdp: the offer is not text (it holds NUL bytes)")
    return text


def check_offer(offer: bytes | str) -> str | None:
    """What is wrong with ``offer`` as a WebRTC SDP offer with Opus audio, or None."""
    if isinstance(offer, str):
        offer = offer.encode("utf-8", "surrogateescape")
    try:
        text = _text(offer)
    except ValueError as exc:
        return str(exc)
    lines = [line.strip() for line in text.splitlines()]
    if not lines or lines[0] != "v=0":
        return "sdp: the offer does not start with v=0 (not SDP)"
    sections: list[list[str]] = [[]]
    for line in lines:
        if line.startswith("m="):
            sections.append([])
        sections[-1].append(line)
    session, media = sections[0], sections[1:]
    audio = [s for s in media if s[0].startswith("m=audio ")]
    if not audio:
        return "sdp: the offer has no audio (m=audio) section"
    opus = [s for s in audio if _OPUS.search("\n".join(s))]
    if not opus:
        return "sdp: the offer's audio does not offer Opus (opus/48000/2)"
    chosen = opus[0]
    for name in ("ice-ufrag", "ice-pwd"):
        if not (_attribute(chosen, name) or _attribute(session, name)):
            return f"sdp: the offer has no a={name} (ICE credentials)"
    if not (_attribute(chosen, "fingerprint") or _attribute(session, "fingerprint")):
        return "sdp: the offer has no a=fingerprint (DTLS-SRTP)"
    return None
