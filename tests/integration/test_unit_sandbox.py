"""The shipped unit and the speech stack agree: what runs under the unit's restriction works.

Each child process runs through ``tests.sandbox`` with the memory restriction that
``systemd/sipai.service`` declares (``MemoryDenyWriteExecute=``), read from the unit file
itself: if the unit gains a setting that breaks Whisper, Piper or pjsua2, these tests fail.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from media.vad import rms_dbfs
from media.wav import read_wav, write_wav
from tests.audio import tone, tone_level_db
from tests.peers.kamailio import Kamailio
from tests.peers.phone import TestPhone
from tests.sandbox import unit_flags
from tests.support import ROOT, phone_rtp_base

UTTERANCE = "Please tell John that the delivery will arrive tomorrow morning."
MAX_RTF = 1.0  # measured about 0.1 on 2 cores: a 3 s turn is heard in about 0.3 s


def _sandboxed(flags: list[str], *command: str, timeout: float = 180) -> dict[str, Any]:
    """Run ``command`` through the launcher; its one JSON line of output."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.sandbox", *flags, "--", *command],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.fixture(scope="module")
def speech_under_unit(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    wav = tmp_path_factory.mktemp("sandbox") / "utterance.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), UTTERANCE], check=True, timeout=30)
    return _sandboxed(
        unit_flags(),
        sys.executable,
        "-m",
        "tests.integration.sandboxed_speech",
        "speech",
        str(wav),
        "Your appointment is confirmed.",
    )


def test_the_launcher_really_denies_write_execute() -> None:
    """Under --deny-write-execute a writable+executable mapping is refused (MDWE set); without
    it the same mapping is allowed, so the probe tells the two apart."""
    probe = [sys.executable, "-m", "tests.integration.sandboxed_speech", "probe"]
    denied = _sandboxed(["--deny-write-execute"], *probe)
    allowed = _sandboxed([], *probe)
    assert denied == {"mdwe": True, "wx_mapping": "refused", "errno": 13}, denied
    assert allowed == {"mdwe": False, "wx_mapping": "allowed", "errno": None}, allowed


def test_whisper_transcribes_under_the_units_restriction(
    speech_under_unit: dict[str, Any],
) -> None:
    """The daemon's Whisper (tiny.en) hears a synthesised utterance under the unit's restriction,
    faster than real time."""
    result = speech_under_unit
    print(json.dumps({"unit_flags": unit_flags(), **result}))
    assert "stt_error" not in result, f"speech recognition fails under the unit: {result}"
    words = set("".join(c if c.isalnum() else " " for c in result["heard"].lower()).split())
    assert {"delivery", "tomorrow", "morning"} <= words, result
    rtf = result["stt_s"] / result["utterance_s"]
    assert rtf < MAX_RTF, f"real-time factor {rtf:.2f} (>= {MAX_RTF}): {result}"


def test_piper_speaks_under_the_units_restriction(speech_under_unit: dict[str, Any]) -> None:
    """Piper synthesises speech-length, speech-level audio under the unit's restriction."""
    result = speech_under_unit
    assert "tts_error" not in result, f"speech synthesis fails under the unit: {result}"
    assert 1.0 < result["tts_audio_s"] < 4.0, result
    assert result["tts_dbfs"] > -30, result


async def _phone(name: str, flags: list[str]) -> TestPhone:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.sandbox",
        *flags,
        "--",
        sys.executable,
        "-m",
        "tests.peers.phone_process",
        "--rtp-port",
        str(phone_rtp_base()),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        cwd=ROOT,
    )
    phone = TestPhone(process, name)
    await phone.expect("ready", timeout=20)
    return phone


async def test_pjsua2_calls_under_the_units_restriction(kamailio: Kamailio, tmp_path: Path) -> None:
    """Two pjsua2 endpoints under the unit's restriction register, call each other over RTP
    and hear each other's audio."""
    flags = unit_flags()
    caller, callee = await _phone("caller", flags), await _phone("callee", flags)
    try:
        await caller.register(kamailio, "1001")
        await callee.register(kamailio, "1002")
        await callee.command("mode", on_incoming="answer", answer_after_ms=0)
        dialled = await caller.command("dial", uri="sip:1002@127.0.0.1")
        incoming = await callee.expect("incoming", timeout=10)
        await caller.expect("media", call=dialled["call"], status="active", timeout=10)
        heard = tmp_path / "heard.wav"
        await callee.command("record", call=incoming["call"], wav=str(heard))
        write_wav(tmp_path / "tone.wav", 8000, tone(800, 8000, 1.0))
        await caller.command("play", call=dialled["call"], wav=str(tmp_path / "tone.wav"))
        await caller.expect("played", timeout=10)
        await callee.command("stop_record", call=incoming["call"])
        await caller.command("hangup", call=dialled["call"])
    finally:
        await caller.close()
        await callee.close()
    samples = read_wav(heard).samples
    contrast = tone_level_db(samples, 800, 8000) - tone_level_db(samples, 1500, 8000)
    assert rms_dbfs(samples) > -30, f"the callee heard {rms_dbfs(samples):.1f} dBFS"
    assert contrast > 30, f"the tone is {contrast:.1f} dB above the floor"
