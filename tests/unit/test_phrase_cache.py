"""The cache of fixed phrases in the local voice (the bridge phrase) kept by a worker."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from numpy.typing import NDArray

from daemon.calls.inbound import PhraseCache


class Voice:
    """A synthesiser that counts its calls, takes ``seconds`` each, and fails while ``fail``."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.seconds = seconds
        self.calls: list[tuple[str, int]] = []
        self.fail = False

    async def synthesize(self, text: str, rate: int) -> NDArray[np.int16]:
        self.calls.append((text, rate))
        await asyncio.sleep(self.seconds)
        if self.fail:
            raise RuntimeError("no voice")
        return np.full(rate // 10, len(text), dtype=np.int16)


async def test_calls_asking_at_once_share_one_synthesis_and_later_ones_the_result() -> None:
    voice, cache = Voice(0.05), PhraseCache()
    asks = (cache.get("One moment.", 8000, voice.synthesize) for _ in range(5))
    first = await asyncio.gather(*asks)
    later = await cache.get("One moment.", 8000, voice.synthesize)
    assert voice.calls == [("One moment.", 8000)]
    assert all(np.array_equal(speech, later) for speech in first)
    await cache.get("One moment.", 24000, voice.synthesize)  # another rate: its own
    assert voice.calls[-1] == ("One moment.", 24000)


async def test_a_failed_synthesis_is_not_kept() -> None:
    voice, cache = Voice(), PhraseCache()
    voice.fail = True
    with pytest.raises(RuntimeError):
        await cache.get("One moment.", 8000, voice.synthesize)
    voice.fail = False
    assert len(await cache.get("One moment.", 8000, voice.synthesize)) == 800
    assert len(voice.calls) == 2


async def test_a_caller_gone_leaves_the_synthesis_to_the_others() -> None:
    """The first asker is cancelled (its call ended): the one asking with it still gets it."""
    voice, cache = Voice(0.1), PhraseCache()
    gone = asyncio.ensure_future(cache.get("One moment.", 8000, voice.synthesize))
    await asyncio.sleep(0)
    staying = asyncio.ensure_future(cache.get("One moment.", 8000, voice.synthesize))
    await asyncio.sleep(0.02)
    gone.cancel()
    assert len(await staying) == 800
    assert voice.calls == [("One moment.", 8000)]


async def test_the_cache_is_bounded() -> None:
    voice, cache = Voice(), PhraseCache(size=2)
    for text in ("a", "b", "c"):
        await cache.get(text, 8000, voice.synthesize)
    await cache.get("a", 8000, voice.synthesize)  # the oldest went
    assert [text for text, _ in voice.calls] == ["a", "b", "c", "a"]
