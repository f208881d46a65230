"""A line that echoes: Piper speech, and what a phone line sends back of it.

:func:`sentence` is Piper's voice at 8 kHz (the voice loaded once per process); :func:`echo`
is what the caller's end sends back of played audio on an echoing line (it went through
mu-law on the way out, then is delayed and attenuated); :func:`through_line` is the way back
through mu-law of whatever the caller's end sends (echo, its own voice, or both).
:class:`EchoingPhone` makes a memory phone such a line.
"""

from __future__ import annotations

import asyncio
from functools import cache

import numpy as np
from numpy.typing import NDArray

from daemon.legs.memory import MemoryPhone
from media.g711 import ulaw_decode, ulaw_encode
from media.resample import resample
from tests.support.amd_cases import _piper_voice, _trim

RATE = 8000
AGENT_LINES = (
    "Thank you for calling. Your appointment is confirmed for Tuesday at three in the "
    "afternoon, and a reminder will be sent the day before.",
    "I can help you with that. Could you tell me the name on the booking and the date you "
    "would prefer instead?",
    "Our office is open from eight in the morning until six in the evening, Monday to Friday.",
)
CALLER_LINES = (
    "No, wait, I need to move it to Thursday morning please.",
    "Sorry, can I speak to someone at the front desk instead?",
)


@cache
def _sentence(text: str) -> bytes:
    from piper import SynthesisConfig  # noqa: PLC0415 - heavy import, only when needed

    voice = _piper_voice()
    config = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)  # the same audio every run
    chunks = [c.audio_int16_array for c in voice.synthesize(text, syn_config=config)]
    pcm = resample(np.concatenate(chunks).astype(np.int16), int(voice.config.sample_rate), RATE)
    return _trim(pcm).tobytes()


def sentence(text: str) -> NDArray[np.int16]:
    """``text`` in Piper's voice at 8 kHz (without its random variation: the same samples
    every run), its own leading and trailing silence cut."""
    return np.frombuffer(_sentence(text), dtype=np.int16).copy()


def _mulaw(pcm: NDArray[np.float64] | NDArray[np.int16]) -> NDArray[np.int16]:
    clipped = np.clip(np.rint(np.asarray(pcm, dtype=np.float64)), -32768, 32767)
    return ulaw_decode(ulaw_encode(clipped.astype(np.int16)))


def echo(played: NDArray[np.int16], delay_ms: float, gain_db: float) -> NDArray[np.float64]:
    """What the caller's end sends back of ``played`` (same length): mu-law out, then
    ``delay_ms`` later at ``gain_db``."""
    out = _mulaw(played).astype(np.float64) * 10 ** (gain_db / 20)
    delay = round(delay_ms * RATE / 1000)
    return np.concatenate((np.zeros(delay), out))[: len(played)]


def through_line(uplink: NDArray[np.float64] | NDArray[np.int16]) -> NDArray[np.int16]:
    """The way back to the daemon: mu-law once."""
    return _mulaw(uplink)


class EchoingPhone:
    """A memory phone whose line sends back what it hears, ``delay_ms`` later at ``gain_db``
    through mu-law both ways, with whatever the caller says (:meth:`say`) and the line's own
    noise (white, at ``noise_dbfs``) on top.

    A task on the phone's media takes each frame the daemon sent it and queues, for the
    daemon to hear, that frame's echo plus the next frame of the caller's voice; the queue
    starts with ``delay_ms`` of silence: the daemon's clock stamps see the echo of a frame
    handed out at one tick come back that much later (the task reads the frame in the tick
    it was sent, and the phone hands its echo out from the next). A frame that would queue
    more than that delay (the task fell behind) is dropped: the delay stays the line's.
    """

    def __init__(
        self,
        phone: MemoryPhone,
        delay_ms: int = 100,
        gain_db: float = -10.0,
        noise_dbfs: float | None = None,
    ) -> None:
        self.phone = phone
        self.gain = 10 ** (gain_db / 20)
        self.delay_ms = delay_ms
        self.noise = 0.0 if noise_dbfs is None else 32768 * 10 ** (noise_dbfs / 20)
        self._random = np.random.default_rng(7)
        self._lead = 0
        self._voice: NDArray[np.int16] = np.zeros(0, dtype=np.int16)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        media = self.phone.media
        frame = media.frame_bytes // 2
        lead = self.delay_ms * media.rate // 1000
        self._lead = lead - lead % frame
        media.playout.push("line", np.zeros(self._lead, dtype=np.int16))
        self._task = asyncio.create_task(self._run())

    def say(self, pcm: NDArray[np.int16]) -> None:
        """The caller speaks ``pcm`` over whatever the line echoes, from the next frame."""
        self._voice = np.concatenate((self._voice, pcm))

    @property
    def saying(self) -> bool:
        return len(self._voice) > 0

    async def _run(self) -> None:
        media = self.phone.media
        async for _, data in media.stamped_frames():
            heard = np.frombuffer(data, dtype="<i2")
            out = _mulaw(heard).astype(np.float64) * self.gain
            voice, self._voice = self._voice[: len(out)], self._voice[len(out) :]
            out[: len(voice)] += voice
            if self.noise:
                out += self._random.standard_normal(len(out)) * self.noise
            if media.playout.depth_samples >= self._lead + len(out):
                continue  # the task stalled and the frames piled up: keep the line's delay
            media.playout.push("line", _mulaw(out))

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
