"""A stream's statistics read as it goes: nothing the reading raises may cross into pjsua2."""

from __future__ import annotations

from types import SimpleNamespace

import pjsua2 as pj
from structlog.testing import capture_logs

from daemon.legs.media import LegMedia
from sip.call import guarded_stats, media_stats


def test_a_stats_object_of_the_wrong_shape_is_counted_and_logged_not_raised() -> None:
    """Reading statistics of the wrong shape (no ``rtcp``: AttributeError) gives no stats, one
    ``callback_errors`` and one ``call.stats_failed`` line instead of an exception."""
    audio = LegMedia(8000)
    with capture_logs() as logs:
        stats = guarded_stats("c-1", audio, lambda: media_stats(SimpleNamespace(), "", audio))
    assert stats is None
    assert audio.stats().callback_errors == 1, audio.stats()
    failed = [(e["call_id"], e["error"][:14]) for e in logs if e["event"] == "call.stats_failed"]
    assert failed == [("c-1", "AttributeError")], logs


def test_a_gone_stream_is_no_error() -> None:
    """pjsua2's own error (the stream is gone already) gives no stats and counts nothing."""
    audio = LegMedia(8000)

    def gone() -> None:
        raise pj.Error()

    with capture_logs() as logs:
        assert guarded_stats("c-2", audio, gone) is None  # type: ignore[arg-type]
    assert audio.stats().callback_errors == 0
    assert logs == []
