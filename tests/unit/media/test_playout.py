"""The playout buffer: bursts in, one frame per tick out, exact per-item accounting, flush."""

from __future__ import annotations

import sys
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from media.playout import PlayoutBuffer

FRAME = 160  # 20 ms at 8 kHz


def _ramp(n: int, start: int = 1) -> np.ndarray:
    return (np.arange(start, start + n) % 20000 + 1).astype(np.int16)


def _samples(frame: bytes) -> np.ndarray:
    return np.frombuffer(frame, dtype="<i2")


def test_burst_comes_out_one_frame_per_tick_in_order() -> None:
    """Three seconds pushed at once leave as 150 frames, in order, then silence."""
    buf = PlayoutBuffer(rate=8000)
    audio = _ramp(24000)
    assert buf.push("item_1", audio) == 24000
    assert buf.stats().depth_ms == 3000
    out = [buf.pull() for _ in range(150)]
    assert all(len(frame) == 2 * FRAME for frame in out)
    assert np.array_equal(np.concatenate([_samples(f) for f in out]), audio)
    assert buf.pull() == bytes(2 * FRAME)
    assert buf.played_ms("item_1") == 3000


def test_partial_frames_wait_for_more_or_the_end_of_the_item() -> None:
    """Chunks of odd sizes are joined; end_item pads the tail and counts only real samples."""
    buf = PlayoutBuffer(rate=8000)
    for size in (100, 37, 250, 13):  # 400 samples = 2.5 frames
        buf.push("a", _ramp(size))
    assert buf.stats().depth_ms == 40  # two whole frames queued, 80 samples pending
    buf.end_item("a")
    frames = [buf.pull() for _ in range(3)]
    assert _samples(frames[2])[80:].tolist() == [0] * 80
    assert buf.played_samples("a") == 400
    assert buf.played_ms("a") == 50


def test_underruns_count_only_while_an_item_streams() -> None:
    """Silence while a response is still arriving is an underrun; idle silence is not."""
    buf = PlayoutBuffer(rate=8000)
    buf.pull()
    assert buf.stats().underruns == 0
    buf.push("a", _ramp(FRAME))
    buf.pull()
    buf.pull()  # model is late: underrun
    assert buf.stats().underruns == 1
    buf.end_item("a")
    buf.pull()
    assert buf.stats().underruns == 1
    assert buf.stats().frames_out == 4


def test_flush_fades_within_one_frame_and_counts_what_was_heard() -> None:
    """After flush the next frame fades out in 5-10 ms, then silence; ms played are exact."""
    buf = PlayoutBuffer(rate=8000, fade_ms=8)
    loud = np.full(8000, 20000, dtype=np.int16)
    buf.push("a", loud)
    for _ in range(10):
        buf.pull()
    buf.flush()
    assert buf.flush_pending
    faded = _samples(buf.pull())
    assert not buf.flush_pending
    assert faded[0] == 20000
    assert np.all(np.diff(faded[:64].astype(int)) <= 0)  # monotonic fade over 8 ms
    assert np.all(faded[64:] == 0)
    assert buf.pull() == bytes(2 * FRAME)
    assert buf.played_samples("a") == 10 * FRAME + 64  # 200 ms + the 8 ms fade
    assert buf.played_ms("a") == 208
    assert buf.stats().depth_ms == 0
    assert buf.stats().flushes == 1


def test_audio_pushed_after_flush_survives_it() -> None:
    """A new response queued right after a flush plays once the old one is faded out."""
    buf = PlayoutBuffer(rate=8000)
    buf.push("old", np.full(1600, 1000, dtype=np.int16))
    buf.flush()
    buf.push("new", np.full(FRAME, 7, dtype=np.int16))
    faded = buf.pull()
    assert _samples(faded)[0] == 1000
    assert _samples(buf.pull()).tolist() == [7] * FRAME
    assert buf.played_samples("new") == FRAME


def test_capacity_refuses_the_excess_and_counts_it() -> None:
    """Past capacity_seconds the newest samples are refused and counted as overrun."""
    buf = PlayoutBuffer(rate=8000, capacity_seconds=1.0)
    assert buf.push("a", _ramp(6000)) == 6000
    assert buf.push("a", _ramp(6000)) == 2000
    assert buf.stats().overrun_samples == 4000
    assert buf.stats().depth_ms == 1000


def test_fade_must_fit_a_frame() -> None:
    """A fade shorter than 5 ms or longer than a frame is a configuration error."""
    with pytest.raises(ValueError, match="fade_ms"):
        PlayoutBuffer(fade_ms=2)


@settings(max_examples=60, deadline=None)
@given(
    chunks=st.lists(st.integers(min_value=1, max_value=2000), min_size=1, max_size=20),
    pulls=st.integers(min_value=0, max_value=200),
)
def test_accounting_matches_frames_handed_out(chunks: list[int], pulls: int) -> None:
    """For any burst pattern, played samples equal the real samples in frames handed out."""
    buf = PlayoutBuffer(rate=8000, capacity_seconds=100)
    pushed = sum(chunks)
    for size in chunks:
        buf.push("a", np.ones(size, dtype=np.int16))
    buf.end_item("a")
    heard = sum(int(np.count_nonzero(_samples(buf.pull()))) for _ in range(pulls))
    assert buf.played_samples("a") == heard == min(pushed, pulls * FRAME)


def test_producer_and_consumer_threads() -> None:
    """Pushing and forgetting from one thread while another pulls loses, duplicates and
    reorders nothing: the playing item's count stays exact and forgotten items are gone."""
    buf = PlayoutBuffer(rate=8000, capacity_seconds=100)
    done_items = [f"old_{i}" for i in range(200)]
    for item in done_items:  # items already played out, to be forgotten while "a" plays
        buf.push(item, _ramp(FRAME))
        buf.pull()
    total = 400 * FRAME
    audio = _ramp(total)
    out: list[bytes] = []
    done = threading.Event()

    def consume() -> None:
        while not done.is_set() or buf.stats().depth_ms > 0:
            frame = buf.pull()
            if any(frame):
                out.append(frame)

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can
    try:
        consumer = threading.Thread(target=consume)
        consumer.start()
        forgets = iter(done_items)
        for offset in range(0, total, 333):
            buf.push("a", audio[offset : offset + 333])
            buf.forget(next(forgets))
        buf.end_item("a")
        for item in forgets:
            buf.forget(item)
        done.set()
        consumer.join(timeout=30)
    finally:
        sys.setswitchinterval(switch)
    assert np.array_equal(np.concatenate([_samples(f) for f in out]), audio)
    assert buf.played_samples("a") == total
    buf.pull()  # the consumer drops what is still queued to forget
    remembered = [item for item in done_items if buf.played_samples(item)]
    assert remembered == [], f"{len(remembered)} forgotten items still counted"


def test_arrival_to_hand_out_is_metered_when_nothing_is_queued_ahead() -> None:
    """A stamped push into a dry buffer records arrival -> hand-out of its first frame; audio
    queued behind other audio is not the daemon's delay and is not metered."""
    buffer = PlayoutBuffer(rate=8000)
    arrived = time.monotonic()
    buffer.push("a", np.ones(240, dtype=np.int16), arrived)  # 1.5 frames into a dry buffer
    buffer.push("a", np.ones(80, dtype=np.int16), arrived)  # queued behind: not metered
    buffer.pull()
    buffer.pull()
    assert buffer.pull() == bytes(320)  # dry again
    buffer.push("a", np.ones(160, dtype=np.int16), arrived - 0.01)
    buffer.push("a", np.ones(160, dtype=np.int16))  # not stamped
    buffer.pull()
    buffer.pull()
    assert len(buffer.latencies) == 2
    assert all(0 <= latency < 1.0 for latency in buffer.latencies)


def test_first_frame_out_of_each_item_is_stamped_on_the_buffer_clock() -> None:
    """``first_out`` of an item is the buffer clock's time at the pull that handed out its
    first frame, kept after the item is forgotten; None for an item not handed out yet."""
    now = [100.0]
    buffer = PlayoutBuffer(rate=8000, clock=lambda: now[0])
    buffer.push("a", np.ones(2 * FRAME, dtype=np.int16))
    buffer.end_item("a")
    buffer.push("b", np.ones(FRAME, dtype=np.int16))
    assert buffer.first_out("a") is None
    stamps = []
    for _ in range(4):
        now[0] += 0.02
        buffer.pull()
        stamps.append(now[0])
    assert buffer.first_out("a") == stamps[0], (buffer.first_out("a"), stamps)
    assert buffer.first_out("b") == stamps[2], (buffer.first_out("b"), stamps)
    buffer.forget("a")
    buffer.pull()
    assert buffer.first_out("a") == stamps[0]
    assert buffer.first_out("c") is None
