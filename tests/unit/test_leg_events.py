"""The event queue of the legs that make their own events (memory, browser)."""

from __future__ import annotations

from daemon.legs.leg import Answered, Ended, LegEvents, Ringing


async def test_events_come_in_order_the_last_ended_repeats_and_release_stops_posting() -> None:
    """Events come out in the order posted, the last ``Ended`` is given again once nothing else
    waits, and nothing posted after release is queued."""
    events = LegEvents()
    ended = Ended(200, "Normal call clearing")
    for event in (Ringing(180), Answered(), ended):
        events.post(event)
    assert [await events.receive() for _ in range(3)] == [Ringing(180), Answered(), ended]
    assert await events.receive() is ended
    events.post(Answered())
    assert await events.receive() == Answered()  # queued before release: still given
    events.release()
    events.post(Ringing(183))
    assert await events.receive() is ended
