"""Outbound notification calls through the real daemon, Kamailio, a phone and a webhook receiver."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from daemon.speech import SpeechToText
from daemon.speech.local import WhisperTranscriber
from media.wav import read_wav
from tests.audio import bursts, occurrences
from tests.peers.kamailio import Kamailio, password, running_kamailio
from tests.peers.openai_audio import OpenAIAudio
from tests.peers.phone import TestPhone
from tests.peers.receiver import Receiver
from tests.support import DaemonProcess, callee, registered

pytestmark = pytest.mark.e2e
MESSAGE = "Hello, this is a reminder about your dentist appointment tomorrow morning."


class Daemon:
    def __init__(self, process: DaemonProcess) -> None:
        self.process = process
        self.base = process.base_url

    async def post(self, body: dict[str, Any]) -> dict[str, Any]:
        async with httpx.AsyncClient() as client:
            response = await client.post(f"{self.base}/call", json=body)
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result


@pytest.fixture
async def pbx(tmp_path: Path) -> AsyncIterator[Kamailio]:
    async with running_kamailio(tmp_path / "k") as kamailio:
        yield kamailio


@contextlib.asynccontextmanager
async def _running(pbx: Kamailio, env: dict[str, str]) -> AsyncIterator[Daemon]:
    env = env | {
        "SIPAI_SIP__REGISTRAR": pbx.uri,
        "SIPAI_SIP__PASSWORD": password("1000"),
    }
    async with DaemonProcess(env, wait=registered) as process:
        yield Daemon(process)


@contextlib.asynccontextmanager
async def _receiving() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    try:
        yield receiver
    finally:
        receiver.close()


@pytest.fixture
async def daemon(pbx: Kamailio, daemon_env: dict[str, str]) -> AsyncIterator[Daemon]:
    async with _running(pbx, daemon_env) as running:
        yield running


async def _webhook(receiver: Receiver, within: float = 60.0) -> dict[str, Any]:
    async with asyncio.timeout(within):
        while not receiver.requests():
            await asyncio.sleep(0.1)
    payload: dict[str, Any] = json.loads(receiver.requests()[0].body)
    return payload


async def test_plain_notification_is_heard(pbx: Kamailio, daemon: Daemon, tmp_path: Path) -> None:
    """The phone answers and hears the message (Whisper finds its words); completed."""
    async with _receiving() as receiver, callee(pbx, "1001", answer_after_ms=200) as phone:
        posted = await daemon.post(
            {"message": MESSAGE, "extension": "1001", "callback_url": receiver.url}
        )
        incoming = await phone.expect("incoming", timeout=20)
        await phone.expect("media", call=incoming["call"], status="active")
        await phone.command("record", call=incoming["call"], wav=str(tmp_path / "heard.wav"))
        payload = await _webhook(receiver)
        assert payload["call_id"] == posted["call_id"]
        assert (payload["status"], payload["message_played"]) == ("completed", True), payload
        assert payload["duration_seconds"] > 2.0
        await phone.expect("call", call=incoming["call"], state="DISCONNECTED")
        await phone.expect("recorded", call=incoming["call"])
        heard = read_wav(tmp_path / "heard.wav")
        text = await SpeechToText(_whisper()).transcribe(heard.samples, heard.rate)
        words = set("".join(c if c.isalnum() else " " for c in text.lower()).split())
        assert {"reminder", "dentist", "appointment"} <= words, text


LONG_BODY = (
    "This is the service desk with an update on your repair order.",
    "The technician has replaced the pump and tested the heating system twice.",
    "A short report of the work will be sent to you by mail within three days.",
    "If the radiators stay cold after tonight, call the office during opening hours.",
)
LONG_END = "Last of all, remember to bring the blue folder."


def _long_message(characters: int) -> str:
    """Text of exactly ``characters`` characters that ends with ``LONG_END``."""
    body = ""
    for sentence in itertools.cycle(LONG_BODY):
        if len(body) + len(sentence) + 1 + len(LONG_END) > characters:
            return (body + LONG_END).ljust(characters)
        body += sentence + " "
    raise AssertionError("unreachable")


@pytest.mark.realtime
async def test_message_over_one_ipc_frame_is_heard_to_its_last_words(
    pbx: Kamailio, daemon: Daemon, tmp_path: Path
) -> None:
    """A 1,000-character message (the audio of ~912 used to fill the 1 MiB IPC frame) is
    dialled and played whole: the phone hears its last words."""
    message = _long_message(1000)
    async with _receiving() as receiver, callee(pbx, "1012", answer_after_ms=200) as phone:
        await daemon.post({"message": message, "extension": "1012", "callback_url": receiver.url})
        incoming = await phone.expect("incoming", timeout=60)
        media = await phone.expect("media", call=incoming["call"], status="active")
        await phone.command("record", call=incoming["call"], wav=str(tmp_path / "heard.wav"))
        recording_from = time.monotonic()  # the clock of the phone's "at" stamps
        payload = await _webhook(receiver, within=180)
        assert (payload["status"], payload["message_played"]) == ("completed", True), payload
        await phone.expect("call", call=incoming["call"], state="DISCONNECTED", timeout=30)
        await phone.expect("recorded", call=incoming["call"], timeout=30)
        heard = read_wav(tmp_path / "heard.wav")
        first = int(np.argmax(np.abs(heard.samples) > 500))
        to_audio_ms = (recording_from - media["at"] + first / heard.rate) * 1000
        tail = heard.samples[-6 * heard.rate :]  # the daemon hangs up when the message ends
        text = await SpeechToText(_whisper()).transcribe(tail, heard.rate)
        words = set(re.findall(r"[a-z]+", text.lower()))
        print(
            f"{len(message)} characters, {len(heard.samples) / heard.rate:.1f} s heard, "
            f"answer -> first audio {to_audio_ms:.0f} ms, last 6 s: {text!r}"
        )
        assert payload["duration_seconds"] > 45, payload
        assert to_audio_ms <= 200, f"answer -> first audio {to_audio_ms:.0f} ms (budget 200)"
        assert {"blue", "folder"} <= words, text


async def test_busy_is_reported(pbx: Kamailio, daemon: Daemon) -> None:
    """A callee that answers 486 gives a busy webhook with nothing played."""
    async with _receiving() as receiver, callee(pbx, "1002", mode="busy"):
        await daemon.post({"message": MESSAGE, "extension": "1002", "callback_url": receiver.url})
        payload = await _webhook(receiver)
        assert (payload["status"], payload["message_played"]) == ("busy", False)


PROMPT = "Would you like to confirm or cancel? Say yes or no."
OPTIONS = [
    {"value": "confirmed", "synonyms": ["yes", "yeah", "yep", "confirm", "okay", "sure"]},
    {"value": "cancelled", "synonyms": ["no", "nope", "cancel", "nevermind"]},
]
_voice: dict[str, Any] = {}


def _whisper() -> WhisperTranscriber:
    whisper: WhisperTranscriber = _voice.setdefault("whisper", WhisperTranscriber())
    return whisper


def _say(text: str, path: Path) -> tuple[str, float]:
    """Speech for ``text`` as an 8 kHz WAV (the daemon's own voice); returns (path, seconds)."""
    from daemon.speech.local import PiperSynthesizer  # noqa: PLC0415 - loaded once, lazily
    from media.resample import resample  # noqa: PLC0415
    from media.wav import write_wav  # noqa: PLC0415

    voice = _voice.setdefault("piper", PiperSynthesizer())
    audio = resample(voice.synthesize(text), voice.rate, 8000)
    write_wav(path, 8000, audio)
    return str(path), len(audio) / 8000


def _choice_call(receiver: Receiver, extension: str, **choice: Any) -> dict[str, Any]:
    return {
        "message": MESSAGE,
        "extension": extension,
        "callback_url": receiver.url,
        "choice": {
            "prompt": PROMPT,
            "options": OPTIONS,
            "timeout_seconds": 8,
            "repeat_count": 2,
            **choice,
        },
    }


async def _answer_after_prompt(
    phone: TestPhone, call: int, answer: str, tmp_path: Path, hello_first: bool = False
) -> None:
    """Play ``answer`` once the message and the prompt have been heard: the phone listens,
    and answers when the daemon has talked for nearly their length and then paused (a busy
    machine may start the message late, or leave longer gaps; a timer would answer early)."""
    _, message_s = _say(MESSAGE, tmp_path / "message.wav")
    _, prompt_s = _say(PROMPT, tmp_path / "prompt.wav")
    wav, _ = _say(answer, tmp_path / f"answer-{abs(hash(answer))}.wav")  # per phrase
    if hello_first:
        hello, _ = _say("Hello?", tmp_path / "hello.wav")
        await phone.command("play", call=call, wav=hello)
    after_s = 0.9 * (message_s + prompt_s)
    await phone.command("reply", call=call, wav=wav, after_s=after_s, silence_ms=600)


@pytest.mark.parametrize(
    ("answer", "expected"), [("Yeah, sure.", "confirmed"), ("No thanks.", "cancelled")]
)
async def test_spoken_choice(
    pbx: Kamailio, daemon: Daemon, tmp_path: Path, answer: str, expected: str
) -> None:
    """The phone answers after the prompt; the webhook carries the option and the words."""
    async with _receiving() as receiver, callee(pbx, "1003") as phone:
        await daemon.post(_choice_call(receiver, "1003"))
        incoming = await phone.expect("incoming", timeout=20)
        await phone.expect("media", call=incoming["call"], status="active")
        await _answer_after_prompt(phone, incoming["call"], answer, tmp_path)
        payload = await _webhook(receiver)
        assert payload["status"] == "completed"
        assert payload["choice_response"] == expected, payload
        spoken = answer.lower().strip(".").split(",")[0]
        assert spoken.split()[0] in payload["choice_raw_text"].lower()


async def test_hello_at_pick_up_is_not_the_answer(
    pbx: Kamailio, daemon: Daemon, tmp_path: Path
) -> None:
    """A "hello?" during the message is dropped; the answer after the prompt counts."""
    async with _receiving() as receiver, callee(pbx, "1004") as phone:
        await daemon.post(_choice_call(receiver, "1004"))
        incoming = await phone.expect("incoming", timeout=20)
        await phone.expect("media", call=incoming["call"], status="active")
        await _answer_after_prompt(
            phone, incoming["call"], "No thanks.", tmp_path, hello_first=True
        )
        payload = await _webhook(receiver)
        assert payload["choice_response"] == "cancelled", payload
        assert "hello" not in payload["choice_raw_text"].lower()


KEYED_OPTIONS = [{**OPTIONS[0], "dtmf": "1"}, {**OPTIONS[1], "dtmf": "2"}]


async def _press_when(
    phone: TestPhone, call: int, tmp_path: Path, digit: str, method: str, **trigger: Any
) -> None:
    """Press ``digit`` once the daemon has talked ``after_s`` and then paused ``silence_ms``
    (the phone's ``reply`` with a 20 ms silent WAV: talk time, not a timer)."""
    from media.wav import write_wav  # noqa: PLC0415

    silent = tmp_path / "silent.wav"
    write_wav(silent, 8000, np.zeros(160, dtype=np.int16))
    await phone.command("reply", call=call, wav=str(silent), **trigger)
    await phone.expect("replied", call=call, timeout=30)
    await phone.command("dtmf", call=call, digits=digit, method=method)


async def test_a_key_during_the_prompt_answers(
    pbx: Kamailio, daemon: Daemon, tmp_path: Path
) -> None:
    """Key 2 sent as RFC 4733 while the prompt plays answers at once: cancelled, "dtmf:2"."""
    _, message_s = _say(MESSAGE, tmp_path / "message.wav")
    async with _receiving() as receiver, callee(pbx, "1013") as phone:
        body = _choice_call(receiver, "1013", options=KEYED_OPTIONS)
        await daemon.post(body)
        incoming = await phone.expect("incoming", timeout=20)
        await phone.expect("media", call=incoming["call"], status="active")
        # past the message's voice (and its trailing silence), at the prompt's first pause
        trigger = {"after_s": message_s + 0.4, "silence_ms": 100}
        await _press_when(phone, incoming["call"], tmp_path, "2", "rfc4733", **trigger)
        payload = await _webhook(receiver)
        assert payload["status"] == "completed", payload
        assert (payload["choice_response"], payload["choice_raw_text"]) == ("cancelled", "dtmf:2")


async def test_a_key_sent_as_info_while_listening_answers(
    pbx: Kamailio, daemon: Daemon, tmp_path: Path
) -> None:
    """Key 1 sent as SIP INFO once the prompt has played answers: confirmed, "dtmf:1"."""
    _, message_s = _say(MESSAGE, tmp_path / "message.wav")
    _, prompt_s = _say(PROMPT, tmp_path / "prompt.wav")
    async with _receiving() as receiver, callee(pbx, "1014") as phone:
        await daemon.post(_choice_call(receiver, "1014", options=KEYED_OPTIONS))
        incoming = await phone.expect("incoming", timeout=20)
        await phone.expect("media", call=incoming["call"], status="active")
        trigger = {"after_s": 0.9 * (message_s + prompt_s), "silence_ms": 600}
        await _press_when(phone, incoming["call"], tmp_path, "1", "info", **trigger)
        payload = await _webhook(receiver)
        assert payload["status"] == "completed", payload
        assert (payload["choice_response"], payload["choice_raw_text"]) == ("confirmed", "dtmf:1")


async def _prompts_heard(phone: TestPhone, call: int, wav: Path) -> int:
    """How many times the phone heard the prompt (once the call is over and recorded).

    Between rounds the line is silent, so the recording's second stretch of sound is the
    prompt alone (the first is the message running into the first prompt; Piper does not
    say a sentence the same way twice, so the reference must come from the call itself).
    Every round plays the same cached audio: count its copies, piece by piece (the phone's
    jitter buffer may shift part of a copy by a few ms).
    """
    await phone.expect("recorded", call=call)
    heard = read_wav(wav)
    found = bursts(heard.samples, heard.rate)
    assert len(found) >= 3, found  # message + prompt, at least one more prompt, closing
    start, end = found[1]
    return occurrences(heard.samples, heard.samples[start:end], threshold=0.8, pieces=5)


async def test_silence_repeats_then_null(pbx: Kamailio, daemon: Daemon, tmp_path: Path) -> None:
    """Nothing said: the phone hears the prompt exactly repeat_count times; completed, null."""
    async with _receiving() as receiver, callee(pbx, "1005") as phone:
        await daemon.post(_choice_call(receiver, "1005", timeout_seconds=5, repeat_count=3))
        incoming = await phone.expect("incoming", timeout=20)
        await phone.expect("media", call=incoming["call"], status="active")
        await phone.command("record", call=incoming["call"], wav=str(tmp_path / "heard.wav"))
        payload = await _webhook(receiver, within=90)
        assert (payload["status"], payload["choice_response"]) == ("completed", None)
        assert payload["choice_raw_text"] is None
        heard = await _prompts_heard(phone, incoming["call"], tmp_path / "heard.wav")
        assert heard == 3


async def test_unmatched_answer_repeats_then_null(
    pbx: Kamailio, daemon: Daemon, tmp_path: Path
) -> None:
    """Words that match no option: the prompt is asked again; in the end null with the words."""
    async with _receiving() as receiver, callee(pbx, "1010") as phone:
        await daemon.post(_choice_call(receiver, "1010", timeout_seconds=5, repeat_count=2))
        incoming = await phone.expect("incoming", timeout=20)
        await phone.expect("media", call=incoming["call"], status="active")
        await phone.command("record", call=incoming["call"], wav=str(tmp_path / "heard.wav"))
        await _answer_after_prompt(phone, incoming["call"], "Purple elephant banana.", tmp_path)
        payload = await _webhook(receiver, within=90)
        assert (payload["status"], payload["choice_response"]) == ("completed", None), payload
        raw = (payload["choice_raw_text"] or "").lower()
        assert {"purple", "elephant", "banana"} & set(re.findall(r"[a-z]+", raw)), payload
        heard = await _prompts_heard(phone, incoming["call"], tmp_path / "heard.wav")
        assert heard == 2


async def test_no_answer_failed_and_early_hang_up(
    pbx: Kamailio, daemon: Daemon, tmp_path: Path
) -> None:
    """Never answered -> no_answer; unregistered extension -> failed; hang-up mid-message."""
    receivers = [Receiver(), Receiver(), Receiver()]
    try:
        async with (
            callee(pbx, "1006", mode="ignore", name="ringing"),
            callee(pbx, "1007", name="hanger") as hanger,
        ):
            await daemon.post(
                {
                    "message": MESSAGE,
                    "extension": "1006",
                    "ring_timeout": 5,
                    "callback_url": receivers[0].url,
                }
            )
            await daemon.post(
                {"message": MESSAGE, "extension": "1019", "callback_url": receivers[1].url}
            )
            await daemon.post(
                {"message": MESSAGE, "extension": "1007", "callback_url": receivers[2].url}
            )
            incoming = await hanger.expect("incoming", timeout=20)
            await hanger.expect("media", call=incoming["call"], status="active")
            await asyncio.sleep(1.0)
            await hanger.command("hangup", call=incoming["call"])
            no_answer, failed, hung_up = [await _webhook(r) for r in receivers]
            assert no_answer["status"] == "no_answer"
            assert failed["status"] == "failed"
            assert "404" in failed["error"]
            assert (hung_up["status"], hung_up["message_played"]) == ("completed", False)
            assert hung_up["duration_seconds"] < 3
    finally:
        for receiver in receivers:
            receiver.close()


async def test_two_calls_at_once_get_their_own_answers(
    pbx: Kamailio, daemon: Daemon, tmp_path: Path
) -> None:
    """Two phones answer differently at the same time; each webhook has its own answer."""
    receivers = [Receiver(), Receiver()]
    try:
        async with callee(pbx, "1008", name="a") as a, callee(pbx, "1009", name="b") as b:
            phones = [a, b]
            for receiver, user in zip(receivers, ("1008", "1009"), strict=True):
                await daemon.post(_choice_call(receiver, user))
            calls = [await p.expect("incoming", timeout=20) for p in phones]
            for phone, call in zip(phones, calls, strict=True):
                await phone.expect("media", call=call["call"], status="active")
            await asyncio.gather(
                _answer_after_prompt(phones[0], calls[0]["call"], "Yes, I confirm.", tmp_path),
                _answer_after_prompt(phones[1], calls[1]["call"], "Cancel it please.", tmp_path),
            )
            first, second = [await _webhook(r) for r in receivers]
            assert (first["choice_response"], second["choice_response"]) == (
                "confirmed",
                "cancelled",
            ), (
                first["choice_raw_text"],
                second["choice_raw_text"],
                first["duration_seconds"],
                second["duration_seconds"],
            )
    finally:
        for receiver in receivers:
            receiver.close()


async def test_choice_with_the_rest_speech_backend(
    pbx: Kamailio, daemon_env: dict[str, str], tmp_path: Path
) -> None:
    """speech.backend = "openai": the daemon speaks and hears through the REST endpoints, every
    transcription biased towards the options' words."""
    from daemon.speech.local import PiperSynthesizer  # noqa: PLC0415

    piper = PiperSynthesizer()
    server = OpenAIAudio(lambda text: (piper.synthesize(text), piper.rate), _whisper().transcribe)
    env = daemon_env | {
        "SIPAI_SPEECH__BACKEND": "openai",
        "SIPAI_SPEECH__URL": server.url,
        "SIPAI_SPEECH__API_KEY": server.key,
    }
    receiver = Receiver()
    try:
        async with _running(pbx, env) as daemon, callee(pbx, "1011") as phone:
            await daemon.post(_choice_call(receiver, "1011"))
            incoming = await phone.expect("incoming", timeout=20)
            await phone.expect("media", call=incoming["call"], status="active")
            await _answer_after_prompt(phone, incoming["call"], "Yes, I confirm.", tmp_path)
            payload = await _webhook(receiver)
        assert payload["choice_response"] == "confirmed", payload
        spoken = [s.fields["input"] for s in server.requests("/v1/audio/speech")]
        assert spoken == [MESSAGE, PROMPT, "Thank you. Goodbye."]
        # the answer up to a pause may be transcribed early, twice at most, then the whole
        heard = server.requests("/v1/audio/transcriptions")
        assert 1 <= len(heard) <= 3, [h.fields for h in heard]
        assert all(h.fields["prompt"].startswith("confirmed, yes, yeah") for h in heard)
    finally:
        receiver.close()
        server.close()
