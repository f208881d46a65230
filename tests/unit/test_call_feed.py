"""The console's feed: events completed from their call, the snapshot, resync on overflow."""

from __future__ import annotations

import asyncio

import pytest

from daemon.call_feed import QUEUE_SIZE, CallFeed, FeedFull


async def test_a_stream_too_far_behind_is_told_to_resync() -> None:
    """A stream that falls QUEUE_SIZE events behind loses them and gets ``resync``, then the
    events published since; the publisher never waits for it."""
    feed = CallFeed(ping_seconds=60)
    stream = feed.stream()
    assert await anext(stream) == ("snapshot", {"calls": []})
    for n in range(QUEUE_SIZE + 5):
        feed.publish({"call_id": f"out-{n}", "direction": "outbound", "call_status": "queued"})
    kind, _ = await anext(stream)
    assert kind == "resync"
    after = [await anext(stream) for _ in range(5)]
    assert [(kind, event["call_id"]) for kind, event in after] == [
        ("call", f"out-{n}") for n in range(QUEUE_SIZE, QUEUE_SIZE + 5)
    ], "the events since the overflow follow"
    assert len(feed.snapshot()) == QUEUE_SIZE + 5, "the snapshot keeps every call in progress"
    feed.drain()
    assert [item async for item in stream] == []
    assert feed.subscribers == 0


async def test_the_feed_completes_events_and_caps_its_streams() -> None:
    """An event with only what changed is completed from the call's earlier ones (its turn is
    not carried on), an ended call leaves the snapshot, and one stream past the cap is
    refused, as every stream after the drain ends at once."""
    feed = CallFeed(max_subscribers=1, ping_seconds=60)
    feed.publish(
        {"call_id": "in-1", "direction": "web", "call_status": "ringing", "caller": "web:x"}
    )
    feed.publish({"call_id": "in-1", "call_status": "answered", "turn": {"role": "agent"}})
    feed.publish({"call_id": "in-1", "call_status": "answered"})
    [live] = feed.snapshot()
    assert (live["direction"], live["caller"], live["status"]) == ("web", "web:x", "in_progress")
    assert "turn" not in live
    stream = feed.stream()
    assert (await anext(stream))[0] == "snapshot"
    with pytest.raises(FeedFull):
        feed.stream()
    feed.publish({"call_id": "in-1", "call_status": "failed"})
    kind, event = await asyncio.wait_for(anext(stream), 1)
    assert (kind, event["status"], event["caller"]) == ("call", "ended", "web:x")
    assert feed.snapshot() == []
    feed.drain()
    assert [item async for item in stream] == []
    late = feed.stream()
    assert [item async for item in late] == [("snapshot", {"calls": []})]


async def test_a_stream_never_started_holds_no_place() -> None:
    """A stream whose client left before its body was read (never iterated) takes none of
    the ``max_subscribers`` places, so the feed keeps accepting streams; a started one holds
    its place until it ends."""
    feed = CallFeed(max_subscribers=2, ping_seconds=60)
    for _ in range(3 * feed.max_subscribers):
        feed.stream()  # created and dropped unread, as by a client gone before the body
    assert feed.subscribers == 0, f"{feed.subscribers} places held by streams never started"
    first, second, late = feed.stream(), feed.stream(), feed.stream()
    assert (await anext(first))[0] == "snapshot"
    assert (await anext(second))[0] == "snapshot"
    assert feed.subscribers == 2
    with pytest.raises(FeedFull):
        feed.stream()
    assert [item async for item in late] == [], "one started past the cap ends at once"
    assert feed.subscribers == 2
    await first.aclose()
    assert feed.subscribers == 1, "a stream closed after it started gives its place back"
    feed.drain()
    assert [item async for item in second] == []
