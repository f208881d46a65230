"""The echo guard's detector on synthetic lines: Piper speech played, echo and voices back."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray

from media.echo import EchoDetector, EchoVerdict
from media.playout import PlayoutBuffer
from tests.support.echo_line import (
    AGENT_LINES,
    CALLER_LINES,
    RATE,
    echo,
    sentence,
    through_line,
)

FRAME = RATE // 50
WINDOW_MS = 300


class Line:
    """A playout on a 20 ms clock and a detector fed what came back, frame by frame, on the
    same clock: as on a call, the playout hands out a frame and a caller frame arrives."""

    def __init__(self, played: NDArray[np.int16] | None) -> None:
        self.now = 0.0
        self.playout = PlayoutBuffer(rate=RATE, clock=lambda: self.now)
        if played is not None:
            self.playout.push("agent", played)
            self.playout.end_item("agent")
        self.detector = EchoDetector(RATE)

    def tick(self, uplink_frame: NDArray[np.int16]) -> NDArray[np.int16]:
        """One frame time: a frame out of the playout, ``uplink_frame`` in; the frame out."""
        self.now += 0.02
        out = np.frombuffer(self.playout.pull(), dtype="<i2")
        self.detector.heard(self.now, uplink_frame.tobytes())
        return out

    def judge_along(self, uplink: NDArray[np.int16], step_ms: int = 100) -> list[EchoVerdict]:
        """Run ``uplink`` through, judging the last WINDOW_MS every ``step_ms``."""
        verdicts = []
        step = step_ms // 20
        for index in range(len(uplink) // FRAME):
            self.tick(uplink[index * FRAME : (index + 1) * FRAME])
            if index + 1 >= WINDOW_MS // 20 and (index + 1 - WINDOW_MS // 20) % step == 0:
                verdicts.append(self.detector.judge(self.playout, WINDOW_MS))
        return verdicts


def _played(agent: NDArray[np.int16] | None, frames: int) -> NDArray[np.int16]:
    """What a playout hands out of ``agent`` in ``frames`` ticks."""
    line = Line(agent)
    return np.concatenate([line.tick(np.zeros(FRAME, dtype=np.int16)) for _ in range(frames)])


def _agent() -> NDArray[np.int16]:
    return sentence(AGENT_LINES[0])


def _caller_voice(length: int, start: int = 0) -> NDArray[np.float64]:
    """A different sentence, another speaker's turn, at the level Piper speaks."""
    voice = sentence(CALLER_LINES[0]).astype(np.float64)
    out = np.zeros(length)
    part = voice[: length - start]
    out[start : start + len(part)] = part
    return out


def _rms_along(signal: NDArray[np.float64], count: int, step_ms: int = 100) -> list[float]:
    """The RMS of ``signal`` over the windows :meth:`Line.judge_along` judges."""
    window, step = WINDOW_MS * RATE // 1000, step_ms * RATE // 1000
    parts = [signal[index * step : index * step + window] for index in range(count)]
    return [float(np.sqrt(np.mean(part * part))) for part in parts]


@pytest.mark.parametrize("delay_ms", [20, 100, 250, 400])
@pytest.mark.parametrize("gain_db", [-6, -10, -20, -30])
def test_echo_alone_is_echo_wherever_the_agent_speaks(delay_ms: int, gain_db: int) -> None:
    """The agent's speech back after 20-400 ms at -6..-30 dB, through mu-law both ways, is
    echo in every window where it sounds, and the delay found is the line's."""
    played = _played(_agent(), len(_agent()) // FRAME + 25)
    back = echo(played, delay_ms, gain_db)
    verdicts = Line(_agent()).judge_along(through_line(back))
    level = 10 ** (gain_db / 20)
    sounding = [
        v
        for v, rms in zip(verdicts, _rms_along(back, len(verdicts)), strict=True)
        if rms > max(300 * level, 20)  # the agent's speech (not its tail) is in the echo
    ]
    assert len(sounding) >= 0.7 * len(verdicts), [v.fields() for v in verdicts]
    missed = [v.fields() for v in sounding if not v.echo]
    assert missed == [], missed
    delays = [v.delay_ms for v in sounding if v.reason == "echo"]
    assert np.median(delays) == pytest.approx(delay_ms, abs=1), delays


@pytest.mark.parametrize("delay_ms", [20, 100, 400])
@pytest.mark.parametrize("gain_db", [-6, -10, -30])
def test_a_voice_over_the_echo_is_not_echo(delay_ms: int, gain_db: int) -> None:
    """Another sentence spoken at normal level over the echo: every window where that voice
    is at least as loud as the echo is the caller, not echo."""
    played = _played(_agent(), len(_agent()) // FRAME + 25)
    back = echo(played, delay_ms, gain_db)
    voice = _caller_voice(len(played), RATE // 2)
    verdicts = Line(_agent()).judge_along(through_line(back + voice))
    count = len(verdicts)
    speaking = [
        v
        for v, rms, echo_rms in zip(
            verdicts, _rms_along(voice, count), _rms_along(back, count), strict=True
        )
        if rms > 600 and rms >= echo_rms
    ]
    assert len(speaking) >= 15, len(speaking)
    taken = [v.fields() for v in speaking if v.echo]
    assert taken == [], taken


def test_a_voice_with_nothing_played_is_never_echo() -> None:
    """With the agent silent the caller's voice is never echo, whatever it sounds like."""
    voice = through_line(_caller_voice(200 * FRAME))
    verdicts = Line(None).judge_along(voice)
    assert all(not v.echo for v in verdicts)
    reasons = [v.reason for v in verdicts]
    # silent or no_line: a pause in the voice (noise, or digital silence)
    assert set(reasons) <= {"no_reference", "silent", "no_line"}, reasons
    assert reasons.count("no_reference") >= 0.8 * len(reasons), reasons


def test_a_voice_on_a_line_without_echo_is_not_echo() -> None:
    """The agent speaking and the caller answering on a line that echoes nothing: the caller."""
    voice = _caller_voice(len(_agent()))
    verdicts = Line(_agent()).judge_along(through_line(voice))
    loud = [v for v in verdicts if v.uplink_dbfs > -45]
    assert len(loud) >= 15
    assert [v.fields() for v in loud if v.echo] == []


def test_silence_back_is_not_echo() -> None:
    """While the agent speaks, digital silence back (speech_started on nothing) is no_line:
    nothing came back to match, so the model's VAD decides; only the line's noise back is
    silent (a pause), which the conversation watches as echo."""
    line = Line(_agent())
    for _ in range(150):
        line.tick(np.zeros(FRAME, dtype=np.int16))
    verdict = line.detector.judge(line.playout, WINDOW_MS)
    assert not verdict.echo
    assert verdict.reason == "no_line"
    noisy = Line(_agent())
    rng = np.random.default_rng(7)
    for _ in range(150):
        noisy.tick((rng.standard_normal(FRAME) * 3).astype(np.int16))  # about -80 dBFS
    verdict = noisy.detector.judge(noisy.playout, WINDOW_MS)
    assert not verdict.echo
    assert verdict.reason == "silent"


def test_the_delay_found_is_kept_and_the_window_is_bounded() -> None:
    """A strong match keeps the bulk delay; a window longer than max_window_ms is judged over
    1 s."""
    played = _played(_agent(), 150)
    uplink = through_line(echo(played, 150, -10))
    line = Line(_agent())
    for index in range(150):
        line.tick(uplink[index * FRAME : (index + 1) * FRAME])
    verdict = line.detector.judge(line.playout, 5000)
    assert verdict.echo
    assert verdict.window_ms == 1000
    assert line.detector.delay_ms == pytest.approx(150, abs=1)


def test_the_playout_reference_is_what_was_handed_out_on_its_clock() -> None:
    """reference() returns the frames pulled up to a time, silence and flush fade included,
    zeros before the first frame; a later time is the newest frames."""
    now = [0.0]
    playout = PlayoutBuffer(rate=RATE, clock=lambda: now[0], reference_seconds=1.0)
    ramp = (np.arange(10 * FRAME) % 1000 + 1).astype(np.int16)
    playout.push("a", ramp)
    out = []
    for tick in range(1, 13):
        now[0] = tick * 0.02
        if tick == 6:
            playout.flush()
        out.append(np.frombuffer(playout.pull(), dtype="<i2"))
    handed = np.concatenate(out)
    assert np.array_equal(playout.reference(0.24, len(handed)), handed)
    assert np.array_equal(playout.reference(0.1, 5 * FRAME), handed[: 5 * FRAME])
    early = playout.reference(0.04, 4 * FRAME)
    assert not early[: 2 * FRAME].any()
    assert np.array_equal(early[2 * FRAME :], handed[: 2 * FRAME])
    for tick in range(13, 200):  # the ring wraps: only its last second is kept
        now[0] = tick * 0.02
        playout.pull()
    assert len(playout.reference(now[0], 2 * RATE)) == 2 * RATE
    assert not playout.reference(now[0], 2 * RATE)[: RATE // 2].any()


def _noise(length: int, dbfs: float) -> NDArray[np.float64]:
    """The line's own noise (a room, a trunk's hiss): white, at ``dbfs``."""
    noise: NDArray[np.float64] = np.random.default_rng(1).standard_normal(length)
    return noise * 32768 * 10 ** (dbfs / 20)


@pytest.mark.parametrize("noise_dbfs", [-60, -50])
def test_echo_under_line_noise_is_never_the_caller(noise_dbfs: int) -> None:
    """Echo at -10 dB after 100 ms with the line's noise on top: in the agent's pauses and in
    its soft passages what is left once the echo is taken out is only that noise, so every
    window is echo or silent (the noise floor is found and reported)."""
    played = _played(_agent(), len(_agent()) // FRAME + 25)
    back = echo(played, 100, -10) + _noise(len(played), noise_dbfs)
    verdicts = Line(_agent()).judge_along(through_line(back), step_ms=40)
    caller = [v.fields() for v in verdicts if not v.echo and v.reason != "silent"]
    assert caller == [], caller
    assert sum(v.reason == "silent" for v in verdicts) >= 3  # the pauses
    assert verdicts[-1].noise_dbfs == pytest.approx(noise_dbfs, abs=3)  # at most -50


@pytest.mark.parametrize("noise_dbfs", [-60, -50])
def test_a_voice_over_echo_and_noise_is_not_echo(noise_dbfs: int) -> None:
    """The line's noise does not hide a voice: another sentence over the echo and the noise
    is the caller wherever it is at least as loud as the echo."""
    played = _played(_agent(), len(_agent()) // FRAME + 25)
    back = echo(played, 100, -10)
    voice = _caller_voice(len(played), RATE // 2)
    uplink = through_line(back + voice + _noise(len(played), noise_dbfs))
    verdicts = Line(_agent()).judge_along(uplink)
    count = len(verdicts)
    speaking = [
        v
        for v, rms, echo_rms in zip(
            verdicts, _rms_along(voice, count), _rms_along(back, count), strict=True
        )
        if rms > 600 and rms >= echo_rms
    ]
    assert len(speaking) >= 15, len(speaking)
    taken = [v.fields() for v in speaking if v.echo]
    assert taken == [], taken


def test_a_quiet_voice_over_a_weak_echo_is_not_quiet_echo() -> None:
    """A soft talker (-45 dBFS) on a line with a -30 dB echo is far under the played level
    and still correlates a little with it: without a residual test it would pass for
    echo under noise. Most of its windows are the caller."""
    played = _played(_agent(), len(_agent()) // FRAME + 25)
    back = echo(played, 100, -30)
    voice = _caller_voice(len(played), RATE // 2)
    voice *= 32768 * 10 ** (-45 / 20) / np.sqrt(np.mean(voice[RATE // 2 :] ** 2))
    verdicts = Line(_agent()).judge_along(through_line(back + voice), step_ms=40)
    assert sum(v.reason == "quiet_echo" for v in verdicts) <= 10, [v.reason for v in verdicts]
