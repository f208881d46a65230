"""The simplified G.107 E-model for G.711: R and MOS from loss and one-way delay."""

from __future__ import annotations

import pytest

from media.quality import loss_pct, one_way_ms, rate


@pytest.mark.parametrize(
    ("ppl", "ta_ms", "r", "mos"),
    [
        (0.0, 0.0, 93.20, 4.409),
        (0.0, 60.0, 91.76, 4.380),
        (5.0, 60.0, 75.98, 3.863),
        (2.0, 60.0, None, 4.19),
        (0.0, 300.0, 72.50, 3.712),
    ],
)
def test_g107_figures_for_g711(ppl: float, ta_ms: float, r: float | None, mos: float) -> None:
    """Loss and delay give G.107's R and MOS for G.711 with concealment (Bpl 25.1): 93.2 /
    4.409 on a perfect line, the delay knee at 177.3 ms, 5 % loss costing about 0.5 MOS."""
    rating = rate(ppl, ta_ms)
    print(f"Ppl {ppl} %, Ta {ta_ms} ms: R {rating.r:.2f}, MOS {rating.mos:.3f}")
    if r is not None:
        assert rating.r == pytest.approx(r, abs=0.005), rating
    assert rating.mos == pytest.approx(mos, abs=0.0015 if r is not None else 0.005), rating


def test_inputs_of_the_rating() -> None:
    """Loss counts discarded packets against those expected; the one-way delay is half the
    round trip, the jitter buffer (or twice the jitter) and one packet."""
    assert loss_pct(received=190, lost=10) == pytest.approx(5.0)
    assert loss_pct(received=190, lost=5, discarded=5) == pytest.approx(100 * 10 / 195)
    assert loss_pct(received=0, lost=0) == 0.0
    assert one_way_ms(rtt_ms=40.0, jitter_buffer_ms=30.0, jitter_ms=5.0) == 70.0
    assert one_way_ms(rtt_ms=None, jitter_buffer_ms=0.0, jitter_ms=5.0) == 30.0
