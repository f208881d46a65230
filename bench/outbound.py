"""Outbound notification calls: latencies through the real daemon, speech speed, choice accuracy.

Runs the daemon (supervisor + one SIP worker) registered at a Kamailio on loopback, a pjsua2
test phone as the callee and an HTTP receiver for the webhook, and measures over ``--calls``
choice calls:

- ``post_to_invite_ms``: ``POST /call`` answered -> the INVITE reaches the phone (through
  Kamailio; an upper bound of "INVITE on the wire");
- ``answer_to_audio_ms``: the phone has media -> the first non-silent sample it records;
- ``answer_end_to_webhook_ms``: the callee's answer has finished playing -> webhook received
  (VAD pause or hang-over, transcription, matching, the result sent before the closing);
- ``answer_voice_end_to_webhook_ms``: the same from the answer's last voiced sample (the WAV
  ends with Piper's trailing silence, about 0.25 s);
- ``call_choice_accuracy``: the calls' answers (they cycle through the test utterances)
  matched as expected;

plus Piper's and Whisper's real-time factors and the choice accuracy over the test
utterances, synthesised with Piper, passed through G.711 mu-law at 8 kHz and transcribed the
way a call does: the speech up to a pause of 240 ms first, kept if the pause lasts 560 ms
and it matches one option exactly, else the whole utterance. Answers led by a filler ("Uh...
no") are said as two sentences 0.4 s apart.

Run: .venv/bin/python -m bench.outbound [--calls 3]   (needs kamailio and the speech models).
Prints one JSON object on stdout, logs on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from numpy.typing import NDArray

from bench.amd import figures as amd_figures
from bench.report import emit
from daemon.calls.choice import ChoiceMatcher, Option
from daemon.calls.outbound import DECIDE_SILENCE_MS, PREROLL_FRAMES, SPECULATE_SILENCE_MS
from daemon.speech import SpeechToText
from daemon.speech.local import PiperSynthesizer, WhisperTranscriber
from media import g711
from media.resample import resample
from media.vad import SpeechStarted, SpeechStopped, VoiceActivityDetector
from media.wav import read_wav, write_wav
from tests import support  # first: tests.peers.kamailio and tests.support import each other
from tests.peers.kamailio import password, running_kamailio
from tests.peers.phone import TestPhone
from tests.peers.receiver import Receiver

MESSAGE = "Hello, this is a reminder about your dentist appointment tomorrow morning."
PROMPT = "Would you like to confirm or cancel? Say yes or no."
OPTIONS = [
    Option("confirmed", ("yes", "yeah", "yep", "confirm", "okay", "sure")),
    Option("cancelled", ("no", "nope", "cancel", "nevermind")),
]
UTTERANCES = [
    ("Yeah, sure.", "confirmed"),
    ("No thanks.", "cancelled"),
    ("Cancel it please.", "cancelled"),
    ("I confirm.", "confirmed"),
    ("Yes.", "confirmed"),
    ("Nope.", "cancelled"),
    ("Okay, that works.", "confirmed"),
    ("No, I can't make it.", "cancelled"),
    ("Sure thing.", "confirmed"),
    ("Never mind, cancel.", "cancelled"),
    ("Uh... no.", "cancelled"),
    ("Um... yes.", "confirmed"),
    ("Uh... cancel it.", "cancelled"),
]
BREATH_SECONDS = 0.4  # the silence for "..." in an utterance


def say(voice: PiperSynthesizer, text: str) -> NDArray[np.int16]:
    """``text`` in Piper's voice at 8 kHz; each "..." a pause of BREATH_SECONDS."""
    gap = np.zeros(round(BREATH_SECONDS * voice.rate), dtype=np.int16)
    pieces: list[NDArray[np.int16]] = []
    for n, part in enumerate(text.split("... ")):
        pieces += [gap, voice.synthesize(part)] if n else [voice.synthesize(part)]
    return resample(np.concatenate(pieces), voice.rate, 8000)


def first_pause(phone: NDArray[np.int16], rate: int = 8000) -> NDArray[np.int16] | None:
    """The speech up to its first pause of SPECULATE_SILENCE_MS (pre-roll included) that then
    lasts DECIDE_SILENCE_MS, as a call's listening offers it; None when the utterance has no
    such pause before it ends."""
    vad = VoiceActivityDetector(rate, aggressiveness=2, min_speech_ms=200, hangover_ms=700)
    frame = rate // 50
    padded = np.concatenate((phone, np.zeros(rate, dtype=np.int16)))
    start: int | None = None
    part: NDArray[np.int16] | None = None
    for offset in range(0, len(padded) - frame + 1, frame):
        for event in vad.process(padded[offset : offset + frame]):
            if isinstance(event, SpeechStarted):
                start = max(0, event.at_ms * rate // 1000 - PREROLL_FRAMES * frame)
            elif isinstance(event, SpeechStopped):
                return None
        if start is None:
            continue
        if vad.silence_ms == 0:
            part = None  # voice again: what was taken at the pause is not the answer
        elif vad.silence_ms >= DECIDE_SILENCE_MS and part is not None:
            return part
        elif vad.silence_ms >= SPECULATE_SILENCE_MS and part is None:
            part = padded[start : offset + frame]
    return None


async def speech_figures(repeats: int) -> dict[str, Any]:
    voice = PiperSynthesizer()
    stt = SpeechToText(WhisperTranscriber())
    matcher = ChoiceMatcher(OPTIONS)
    hint = ", ".join(p for o in OPTIONS for p in (o.value, *o.synonyms))
    synth_time = audio_time = stt_time = 0.0
    correct = total = early = 0
    wrong: list[str] = []
    plain = sum(1 for text, _ in UTTERANCES if "..." not in text)
    plain_correct = 0
    for _ in range(repeats):
        for text, expected in UTTERANCES:
            started = time.perf_counter()
            audio = say(voice, text)
            synth_time += time.perf_counter() - started
            audio_time += len(audio) / 8000
            phone = g711.ulaw_decode(g711.ulaw_encode(audio))
            started = time.perf_counter()
            part = first_pause(phone)
            match = None
            if part is not None:
                match = matcher.match(await stt.transcribe(part, 8000, hint))
                if match is not None and match.confidence < 1.0:
                    match = None  # not exact: a call listens on
            if match is None:
                match = matcher.match(await stt.transcribe(phone, 8000, hint))
            else:
                early += 1
            stt_time += time.perf_counter() - started
            right = match is not None and match.value == expected
            correct += int(right)
            plain_correct += int(right and "..." not in text)
            if not right:
                wrong.append(f"{text} -> {match.value if match is not None else None}")
            total += 1
    return {
        "piper_real_time_factor": round(synth_time / audio_time, 3),
        "whisper_real_time_factor": round(stt_time / audio_time, 3),
        "choice_accuracy": round(correct / total, 3),
        "choice_utterances": total,
        # the answers without a filler ("Uh... no." has one): each said once per repeat
        "choice_plain_correct": f"{plain_correct}/{plain * repeats}",
        "choice_wrong": wrong,
        "choice_decided_at_first_pause": early,
    }


async def call_figures(calls: int, directory: Path) -> dict[str, Any]:
    voice = PiperSynthesizer()
    durations, voice_ends = {}, {}
    answers = [(f"answer-{i}", text) for i, (text, _) in enumerate(UTTERANCES)]
    for name, text in (("message", MESSAGE), ("prompt", PROMPT), *answers):
        audio = say(voice, text)
        durations[name] = len(audio) / 8000
        voice_ends[name] = (int(np.flatnonzero(np.abs(audio) > 300)[-1]) + 1) / 8000
        write_wav(directory / f"{name}.wav", 8000, audio)
    post_to_invite, answer_to_audio, answer_to_webhook, voice_to_webhook = [], [], [], []
    matched = 0
    async with running_kamailio(directory / "kamailio") as kamailio:
        api = support.free_port()
        env = {
            **os.environ,
            "SIPAI_SIP__REGISTRAR": kamailio.uri,
            "SIPAI_SIP__PASSWORD": password("1000"),
            "SIPAI_SIP__PORT": str(support.free_port(socket.SOCK_DGRAM)),
            "SIPAI_API__PORT": str(api),
            "SIPAI_STORAGE__PATH": str(directory / "sipai.db"),
            "SIPAI_LOG__LEVEL": "warning",
        }
        command = [sys.executable, "-m", "daemon", "run"]
        daemon = support.DaemonProcess(
            env, command=command, stdout="devnull", stderr="devnull", wait=None
        )
        await daemon.start()
        base = daemon.base_url
        phone = await TestPhone.start("callee")
        try:
            async with httpx.AsyncClient() as client:
                await daemon.ready(support.registered)
                await phone.register(kamailio, "1001")
                await phone.command("mode", on_incoming="answer", answer_after_ms=0)
                for n in range(calls):
                    receiver = Receiver()
                    body = {
                        "message": MESSAGE,
                        "extension": "1001",
                        "callback_url": receiver.url,
                        "choice": {
                            "prompt": PROMPT,
                            "timeout_seconds": 8,
                            "repeat_count": 1,
                            "options": [
                                {"value": o.value, "synonyms": list(o.synonyms)} for o in OPTIONS
                            ],
                        },
                    }
                    await client.post(f"{base}/call", json=body)
                    posted = time.monotonic()
                    incoming = await phone.expect("incoming", timeout=20)
                    post_to_invite.append((incoming["at"] - posted) * 1000)
                    media = await phone.expect("media", call=incoming["call"], status="active")
                    wav = directory / f"heard-{n}.wav"
                    await phone.command("record", call=incoming["call"], wav=str(wav))
                    recording_from = time.monotonic()
                    await asyncio.sleep(durations["message"] + durations["prompt"] + 0.8)
                    turn = n % len(UTTERANCES)
                    answer, expected = f"answer-{turn}", UTTERANCES[turn][1]
                    await phone.command(
                        "play", call=incoming["call"], wav=str(directory / f"{answer}.wav")
                    )
                    played = time.monotonic()
                    async with asyncio.timeout(60):
                        while not receiver.requests():
                            await asyncio.sleep(0.01)
                    webhook = time.monotonic()
                    answer_to_webhook.append((webhook - played - durations[answer]) * 1000)
                    voice_to_webhook.append((webhook - played - voice_ends[answer]) * 1000)
                    payload = json.loads(receiver.requests()[0].body)
                    matched += int(payload.get("choice_response") == expected)
                    await phone.expect("call", call=incoming["call"], state="DISCONNECTED")
                    await phone.expect("recorded", call=incoming["call"])
                    samples = read_wav(wav).samples
                    first = int(np.argmax(np.abs(samples) > 500))
                    answer_to_audio.append((recording_from - media["at"] + first / 8000) * 1000)
                    receiver.close()
        finally:
            await phone.close()
            await daemon.stop(timeout=60)

    def summary(values: list[float]) -> dict[str, float]:
        return {"median": round(statistics.median(values), 1), "max": round(max(values), 1)}

    return {
        "calls": calls,
        "post_to_invite_ms": summary(post_to_invite),
        "answer_to_audio_ms": summary(answer_to_audio),
        "answer_end_to_webhook_ms": summary(answer_to_webhook),
        "answer_voice_end_to_webhook_ms": summary(voice_to_webhook),
        "call_choice_accuracy": f"{matched}/{calls}",
    }


async def main(calls: int, repeats: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="sipai-bench-") as tmp:
        return {
            "benchmark": "outbound",
            "speech": await speech_figures(repeats),
            "calls": await call_figures(calls, Path(tmp)),
            "amd": amd_figures(),
        }


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="passes over the utterances")
    args = parser.parse_args()
    sys.exit(emit(lambda: asyncio.run(main(args.calls, args.repeats))))
