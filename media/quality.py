"""Listening quality of a call from its RTP statistics: the ITU-T G.107 E-model, simplified.

The E-model rates a connection with a transmission rating R (0-100) from which a mean opinion
score (MOS, 1-4.5) follows. Here only the two impairments RTP statistics can show are kept,
with every other G.107 parameter at its default (so the basic signal-to-noise rating
R0 - Is = 93.2, and the advantage factor A = 0):

- delay: ``Id`` from the one-way mouth-to-ear delay ``Ta`` (half the RTCP round trip, plus
  the jitter buffer's delay, plus one packet time), with the G.107 knee at 177.3 ms;
- loss: ``Ie_eff`` from the packet loss percentage, for G.711 with packet loss concealment
  (``Ie`` = 0, ``Bpl`` = 25.1, ITU-T G.113 Appendix I) and random loss (``BurstR`` = 1).

Other codecs are rated with the same constants and say so (:data:`MODEL`). Pure arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass

MODEL = "g107-g711"
R_DEFAULT = 93.2  # R0 - Is with every G.107 default
IE_G711 = 0.0  # equipment impairment of G.711
BPL_G711 = 25.1  # packet-loss robustness of G.711 with concealment
BURST_R = 1.0  # random loss
DELAY_KNEE_MS = 177.3
PTIME_MS = 20.0


@dataclass(frozen=True)
class Rating:
    r: float  # transmission rating
    mos: float


def one_way_ms(
    rtt_ms: float | None, jitter_buffer_ms: float, jitter_ms: float, ptime_ms: float = PTIME_MS
) -> float:
    """Mouth-to-ear delay: half the round trip (0 when unknown), the jitter buffer's delay
    (twice the mean jitter when the buffer reports none) and one packet time."""
    buffer_ms = jitter_buffer_ms if jitter_buffer_ms > 0 else 2 * jitter_ms
    return (rtt_ms or 0.0) / 2 + buffer_ms + ptime_ms


def loss_pct(received: int, lost: int, discarded: int = 0) -> float:
    """Packets lost or discarded as a percentage of those expected (0 when none were)."""
    expected = received + lost
    return 100.0 * (lost + discarded) / expected if expected > 0 else 0.0


def delay_impairment(ta_ms: float) -> float:
    """``Id`` of G.107 for a one-way delay (simplified: no echo terms)."""
    knee = 0.11 * (ta_ms - DELAY_KNEE_MS) if ta_ms > DELAY_KNEE_MS else 0.0
    return 0.024 * ta_ms + knee


def loss_impairment(ppl: float, ie: float = IE_G711, bpl: float = BPL_G711) -> float:
    """``Ie_eff`` of G.107 for ``ppl`` percent of packets lost."""
    if ppl <= 0:
        return ie
    return ie + (95 - ie) * ppl / (ppl / BURST_R + bpl)


def mos_from_r(r: float) -> float:
    """G.107's mapping of the rating R to a MOS."""
    if r < 0:
        return 1.0
    if r > 100:
        return 4.5
    return 1 + 0.035 * r + 7e-6 * r * (r - 60) * (100 - r)


def rate(ppl: float, ta_ms: float) -> Rating:
    """R and MOS for ``ppl`` percent loss at ``ta_ms`` one-way delay."""
    r = R_DEFAULT - delay_impairment(ta_ms) - loss_impairment(ppl)
    return Rating(r=r, mos=mos_from_r(r))
