"""Outbound notification calls: latencies through the real daemon, speech speed, choice accuracy.

Runs the daemon (supervisor + one SIP worker) registered at a Kamailio on loopback, a pjsua2
test phone as the callee and an HTTP receiver for the webhook, and measures over ``--calls``
choice calls:

- ``post_to_invite_ms``: ``POST /call`` answered -> the INVITE reaches the phone (through
  Kamailio; an upper bound of "INVITE on the wire");
- ``answer_to_audio_ms``: the phone has media -> the first non-silent sample it records;
- ``answer_end_to_webhook_ms``: the callee's answer has finished playing -> webhook received
  (VAD hang-over, transcription, matching, closing line and hang-up included);

plus Piper's and Whisper's real-time factors and the choice accuracy over the test
utterances, synthesised with Piper, passed through G.711 mu-law at 8 kHz and transcribed.

Run: .venv/bin/python -m bench.outbound [--calls 3]   (needs kamailio and the speech models).
Prints one JSON object on stdout, logs on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
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

from bench.amd import figures as amd_figures
from bench.report import emit
from daemon.calls.choice import ChoiceMatcher, Option
from daemon.speech import SpeechToText
from daemon.speech.local import PiperSynthesizer, WhisperTranscriber
from media import g711
from media.resample import resample
from media.wav import read_wav, write_wav
from tests.peers.kamailio import password, running_kamailio
from tests.peers.phone import TestPhone
from tests.peers.receiver import Receiver
from tests.support import DaemonProcess, free_port, registered

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
]


async def speech_figures(repeats: int) -> dict[str, Any]:
    voice = PiperSynthesizer()
    stt = SpeechToText(WhisperTranscriber())
    matcher = ChoiceMatcher(OPTIONS)
    hint = ", ".join(p for o in OPTIONS for p in (o.value, *o.synonyms))
    synth_time = audio_time = stt_time = 0.0
    correct = total = 0
    for _ in range(repeats):
        for text, expected in UTTERANCES:
            started = time.perf_counter()
            audio = voice.synthesize(text)
            synth_time += time.perf_counter() - started
            audio_time += len(audio) / voice.rate
            phone = g711.ulaw_decode(g711.ulaw_encode(resample(audio, voice.rate, 8000)))
            started = time.perf_counter()
            heard = await stt.transcribe(phone, 8000, hint)
            stt_time += time.perf_counter() - started
            match = matcher.match(heard)
            correct += int(match is not None and match.value == expected)
            total += 1
    return {
        "piper_real_time_factor": round(synth_time / audio_time, 3),
        "whisper_real_time_factor": round(stt_time / audio_time, 3),
        "choice_accuracy": round(correct / total, 3),
        "choice_utterances": total,
    }


async def call_figures(calls: int, directory: Path) -> dict[str, Any]:
    voice = PiperSynthesizer()
    durations = {}
    for name, text in (("message", MESSAGE), ("prompt", PROMPT), ("answer", "Yeah, sure.")):
        audio = resample(voice.synthesize(text), voice.rate, 8000)
        durations[name] = len(audio) / 8000
        write_wav(directory / f"{name}.wav", 8000, audio)
    post_to_invite, answer_to_audio, answer_to_webhook = [], [], []
    async with running_kamailio(directory / "kamailio") as kamailio:
        api = free_port()
        env = {
            **os.environ,
            "SIPAI_SIP__REGISTRAR": kamailio.uri,
            "SIPAI_SIP__PASSWORD": password("1000"),
            "SIPAI_SIP__PORT": str(free_port(socket.SOCK_DGRAM)),
            "SIPAI_API__PORT": str(api),
            "SIPAI_STORAGE__PATH": str(directory / "sipai.db"),
            "SIPAI_LOG__LEVEL": "warning",
        }
        command = [sys.executable, "-m", "daemon", "run"]
        daemon = DaemonProcess(env, command=command, stdout="devnull", stderr="devnull", wait=None)
        await daemon.start()
        base = daemon.base_url
        phone = await TestPhone.start("callee")
        try:
            async with httpx.AsyncClient() as client:
                await daemon.ready(registered)
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
                    await phone.command(
                        "play", call=incoming["call"], wav=str(directory / "answer.wav")
                    )
                    answer_end = time.monotonic() + durations["answer"]
                    async with asyncio.timeout(60):
                        while not receiver.requests():
                            await asyncio.sleep(0.01)
                    answer_to_webhook.append((time.monotonic() - answer_end) * 1000)
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
