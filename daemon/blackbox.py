"""A call's black box: what the line and the model did, kept in the call's record.

The worker measures it (the SIP stack's stream statistics at the end of the media, the media
counters, the flow's turns and barge-ins) and sends it once, when the call ends, as the JSON
shape below; the supervisor stores it and feeds the metrics from it. Times are seconds
since the call was answered (``*_s``) or milliseconds (``*_ms``); a figure the call could not
measure is ``None``, never 0 (an RTT needs an RTCP report round trip, about 10 s of call).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

VERSION = 1


class RtpReceived(TypedDict):
    packets: int
    lost: int
    loss_pct: float
    discarded: int
    duplicates: int
    reordered: int
    jitter_ms_mean: float
    jitter_ms_max: float


class RtpSent(TypedDict):
    packets: int
    lost_reported: int  # from the peer's RTCP receiver reports
    loss_pct_reported: float | None  # None: the peer sent no report
    jitter_ms_reported: float | None
    reports: int


class RoundTrip(TypedDict):
    mean: float
    max: float
    samples: int


class JitterBuffer(TypedDict):
    avg_delay_ms: float
    max_delay_ms: float
    lost: int
    discarded: int
    empty: int


class Rtp(TypedDict):
    rx: RtpReceived
    tx: RtpSent
    rtt_ms: RoundTrip | None
    jitter_buffer: JitterBuffer


class Mos(TypedDict):
    """Estimated listening quality by the ITU-T G.107 E-model (1 bad .. 4.5 best)."""

    rx: float | None  # what the daemon heard of the caller
    tx: float | None  # what the caller heard, from the peer's reports (None: no report)
    r_rx: float | None
    r_tx: float | None
    one_way_ms: float  # the mouth-to-ear delay the estimate assumed
    model: str  # "g107-g711"


class MediaCounters(TypedDict):
    uplink_frames: int
    uplink_dropped: int
    callback_errors: int
    playout_underruns: int
    overrun_samples: int
    flushes: int


class Turn(TypedDict):
    at_s: float  # when the model reported the caller's end of speech
    caller_end_s: float  # arrival of the caller's last voiced frame (the daemon's own VAD)
    first_audio_s: float | None  # None: the agent never answered this turn
    latency_ms: float | None
    item: str | None


class TurnLatency(TypedDict):
    p50: float | None
    p95: float | None
    max: float | None
    count: int
    unanswered: int


class BargeIn(TypedDict):
    at_s: float
    stop_ms: float  # the model's speech_started -> playout flushed
    truncated_at_ms: float  # how much of the agent's item the caller heard
    cancelled: bool


class Replacement(TypedDict):
    at_s: float
    reason: str  # reconnect | rotation | failover


class ModelFailure(TypedDict):
    kind: str  # a daemon.realtime.client.FailureKind value
    phase: str  # connect | session


class Failover(TypedDict):
    """The model was lost for good and the call went on on the embedded engine."""

    at_s: float  # 0 at connect time
    phase: str  # connect | session
    kind: str  # a daemon.realtime.client.FailureKind value: why
    error: str
    to: str  # "local": the embedded engine


class Model(TypedDict):
    connect_ms: float | None
    reconnects: int
    replacements: list[Replacement]
    failures: list[ModelFailure]
    failovers: list[Failover]


class Outbound(TypedDict):
    invite_at: float | None  # wall time the INVITE went out
    answer_to_first_audio_ms: float | None


class BlackBox(TypedDict, total=False):
    version: int
    codec: str
    rate: int
    rtp: Rtp | None
    mos: Mos | None
    media: MediaCounters | None
    turns: list[Turn]
    turn_latency_ms: TurnLatency
    barge_ins: list[BargeIn]
    model: Model
    outbound: Outbound
    connect_seconds: float


@dataclass(frozen=True)
class RecordingInfo:
    """A finished recording as the worker wrote it."""

    path: str
    duration_seconds: float
    bytes: int
    sha256: str
    complete: bool  # False: frames were dropped (slow disk) or the file could not be finished
    dropped_frames: int
    rate: int
