"""A call's black box (:mod:`daemon.blackbox`), measured as the call goes: pure bookkeeping.

:func:`line` turns the SIP stack's stream statistics at the end of the media
(:class:`~daemon.legs.leg.MediaStats`) into the black box's ``codec``, ``rtp``, ``mos`` and
``media`` sections; :class:`BlackBoxMeter` collects what a flow sees while the call lasts
(turns, barge-ins, model sessions, failovers) and assembles the whole box at the end.

A turn is the model's report that the caller stopped speaking (``at``). Its caller end is the
arrival time of the last caller frame the daemon's own VAD (:class:`VoiceMeter`) found voiced
before the agent answered and at most a second after ``at`` (webrtcvad's own tail of about
100 ms included), or ``at`` itself if there is none; its first audio is
when the first frame of the first item the agent started after ``at`` (and before the next
turn) was handed to the caller. A turn with no such item is unanswered. Times are seconds on
the call's media clock; the box gives them relative to the answer.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable

import numpy as np

from daemon import blackbox as bb
from daemon.calls import conversation_events as ce
from daemon.legs.leg import MediaStats
from media import quality
from media.vad import SpeechStopped, VoiceActivityDetector

VOICE_RING_FRAMES = 100  # arrival times kept: 2 s, well over the VAD's 500 ms hang-over
# The caller's last voiced frame arrives at most this long after the model reports the end
# of speech (the model heard the silence first): a later one belongs to the next utterance.
END_SLACK_SECONDS = 1.0
FirstOut = Callable[[str], float | None]  # item -> when its first frame went out, or None
# Codecs the E-model's G.711 constants do not rate (a browser call's Opus): no MOS for them.
UNRATED_CODECS = frozenset({"opus"})


def line(stats: MediaStats) -> bb.BlackBox:
    """The line's sections of the box: codec, RTP both ways, MOS both ways, media counters."""
    rx_loss = quality.loss_pct(stats.rx_packets, stats.rx_lost, stats.rx_discarded)
    ta_ms = quality.one_way_ms(stats.rtt_ms_mean, stats.jb_avg_delay_ms, stats.rx_jitter_ms)
    heard = quality.rate(rx_loss, ta_ms)
    reported = stats.tx_reports > 0
    tx_loss: float | None = None
    told: quality.Rating | None = None
    if reported:
        tx_loss = quality.loss_pct(
            max(0, stats.tx_packets - stats.tx_lost_reported), stats.tx_lost_reported
        )
        told = quality.rate(tx_loss, ta_ms)
    rtt: bb.RoundTrip | None = None
    if stats.rtt_ms_mean is not None and stats.rtt_samples > 0:
        rtt = {
            "mean": _round(stats.rtt_ms_mean),
            "max": _round(stats.rtt_ms_max),
            "samples": stats.rtt_samples,
        }
    return {
        "codec": stats.codec,
        "rtp": {
            "rx": {
                "packets": stats.rx_packets,
                "lost": stats.rx_lost,
                "loss_pct": _round(rx_loss),
                "discarded": stats.rx_discarded,
                "duplicates": stats.rx_duplicates,
                "reordered": stats.rx_reordered,
                "jitter_ms_mean": _round(stats.rx_jitter_ms),
                "jitter_ms_max": _round(stats.rx_jitter_max_ms),
            },
            "tx": {
                "packets": stats.tx_packets,
                "lost_reported": stats.tx_lost_reported,
                "loss_pct_reported": _round(tx_loss) if tx_loss is not None else None,
                "jitter_ms_reported": _round(stats.tx_jitter_ms_reported) if reported else None,
                "reports": stats.tx_reports,
            },
            "rtt_ms": rtt,
            "jitter_buffer": {
                "avg_delay_ms": _round(stats.jb_avg_delay_ms),
                "max_delay_ms": _round(stats.jb_max_delay_ms),
                "lost": stats.jb_lost,
                "discarded": stats.jb_discarded,
                "empty": stats.jb_empty,
            },
        },
        "mos": None
        if stats.codec in UNRATED_CODECS
        else {
            "rx": _round(heard.mos, 3),
            "tx": _round(told.mos, 3) if told is not None else None,
            "r_rx": _round(heard.r),
            "r_tx": _round(told.r) if told is not None else None,
            "one_way_ms": _round(ta_ms),
            "model": quality.MODEL,
        },
        "media": {
            "uplink_frames": stats.uplink_frames,
            "uplink_dropped": stats.uplink_dropped,
            "callback_errors": stats.callback_errors,
            "playout_underruns": stats.playout_underruns,
            "overrun_samples": stats.playout_overrun_samples,
            "flushes": stats.playout_flushes,
        },
    }


def latency_summary(turns: list[bb.Turn]) -> bb.TurnLatency:
    """p50, p95 and max of the answered turns' latencies; how many went unanswered."""
    values = [t["latency_ms"] for t in turns if t["latency_ms"] is not None]
    if not values:
        return {"p50": None, "p95": None, "max": None, "count": 0, "unanswered": len(turns)}
    return {
        "p50": _round(float(np.percentile(values, 50))),
        "p95": _round(float(np.percentile(values, 95))),
        "max": _round(max(values)),
        "count": len(values),
        "unanswered": len(turns) - len(values),
    }


class VoiceMeter:
    """The daemon's own VAD on the caller's frames: reports, for each end of speech, the
    arrival time of the last voiced frame (from a ring of the latest frames' stamps)."""

    def __init__(self, rate: int, on_end: Callable[[float], None]) -> None:
        self._vad = VoiceActivityDetector(rate, aggressiveness=2)
        self._frame_ms = self._vad.frame_ms
        self._stamps: deque[float] = deque(maxlen=VOICE_RING_FRAMES)
        self._frames = 0  # frames fed so far
        self._on_end = on_end

    def feed(self, stamp: float, frame: bytes) -> None:
        """One 20 ms caller frame that arrived at ``stamp``."""
        self._stamps.append(stamp)
        self._frames += 1
        for event in self._vad.process(frame):
            if isinstance(event, SpeechStopped):
                index = event.at_ms // self._frame_ms - 1  # the last voiced frame
                oldest = self._frames - len(self._stamps)
                if oldest <= index < self._frames:
                    self._on_end(self._stamps[index - oldest])


class BlackBoxMeter:
    """What one call's flow saw; :meth:`black_box` assembles the box at the end."""

    def __init__(self) -> None:
        self.answered_at: float | None = None
        self._caller_ends: list[float] = []
        self._model_stops: list[float] = []
        self._items: list[tuple[float, str]] = []  # (first pushed, item), in push order
        self._seen_items: set[str] = set()
        self._barge_ins: list[bb.BargeIn] = []
        self._replacements: list[bb.Replacement] = []
        self._failures: list[bb.ModelFailure] = []
        self._failovers: list[bb.Failover] = []
        self.connect_ms: float | None = None

    # -- fed by the flow (times on the call's media clock) ---------------------------------

    def answered(self, at: float) -> None:
        self.answered_at = at

    def caller_stopped(self, at: float) -> None:
        """The daemon's VAD: the caller's last voiced frame arrived at ``at``."""
        self._caller_ends.append(at)

    def model_stopped(self, at: float) -> None:
        """The model reported the end of the caller's speech."""
        self._model_stops.append(at)

    def item_started(self, item: str, at: float) -> None:
        """The agent pushed audio of ``item`` (its first push is kept)."""
        if item not in self._seen_items:
            self._seen_items.add(item)
            self._items.append((at, item))

    def note(self, action: ce.BargedIn | ce.SessionNote, at: float) -> None:
        """A barge-in carried out, or a model session replaced, at ``at``."""
        if isinstance(action, ce.SessionNote):
            self._replacements.append({"at_s": self._since(at), "reason": action.reason})
            return
        self._barge_ins.append(
            {
                "at_s": self._since(at),
                "stop_ms": _round(action.stop_ms),
                "truncated_at_ms": float(action.truncated_ms),
                "cancelled": action.cancelled,
            }
        )

    def connected(self, ms: float) -> None:
        self.connect_ms = _round(ms)

    def failed(self, kind: str, phase: str) -> None:
        self._failures.append({"kind": kind, "phase": phase})

    def failed_over(self, kind: str, error: str, phase: str, at: float | None) -> float:
        """The call went on on the embedded engine at ``at`` (None: before the answer); when,
        in seconds since the answer."""
        at_s = max(0.0, self._since(at)) if at is not None else 0.0
        self._failovers.append(
            {"at_s": at_s, "phase": phase, "kind": str(kind), "error": error, "to": "local"}
        )
        return at_s

    # -- the box --------------------------------------------------------------------------

    def turns(self, first_out: FirstOut) -> list[bb.Turn]:
        stops = sorted(self._model_stops)
        turns: list[bb.Turn] = []
        for index, at in enumerate(stops):
            previous = stops[index - 1] if index else -math.inf
            following = stops[index + 1] if index + 1 < len(stops) else math.inf
            item = next((i for t, i in self._items if at <= t < following), None)
            first = first_out(item) if item is not None else None
            bound = min(first if first is not None else math.inf, following, at + END_SLACK_SECONDS)
            ends = [c for c in self._caller_ends if previous < c <= bound]
            caller_end = max(ends) if ends else at
            latency = _round((first - caller_end) * 1000) if first is not None else None
            turns.append(
                {
                    "at_s": self._since(at),
                    "caller_end_s": self._since(caller_end),
                    "first_audio_s": self._since(first) if first is not None else None,
                    "latency_ms": latency,
                    "item": item if first is not None else None,
                }
            )
        return turns

    def black_box(
        self,
        stats: MediaStats | None,
        rate: int,
        connect_seconds: float,
        first_out: FirstOut,
        counters: bb.MediaCounters | None = None,
    ) -> bb.BlackBox:
        """The whole box: the line's sections from ``stats`` (None: a call without a SIP
        stream, whose media section is then ``counters``), and what this meter saw."""
        box: bb.BlackBox = {"version": bb.VERSION, "rate": rate}
        if stats is not None:
            box.update(line(stats))
        else:
            box.update({"codec": "", "rtp": None, "mos": None, "media": counters})
        turns = self.turns(first_out)
        reconnects = sum(1 for r in self._replacements if r["reason"] == "reconnect")
        box.update(
            {
                "turns": turns,
                "turn_latency_ms": latency_summary(turns),
                "barge_ins": list(self._barge_ins),
                "model": {
                    "connect_ms": self.connect_ms,
                    "reconnects": reconnects,
                    "replacements": list(self._replacements),
                    "failures": list(self._failures),
                    "failovers": list(self._failovers),
                },
                "connect_seconds": round(connect_seconds, 3),
            }
        )
        return box

    def _since(self, at: float) -> float:
        return round(at - (self.answered_at or 0.0), 3)


def _round(value: float, digits: int = 2) -> float:
    return round(float(value), digits)
