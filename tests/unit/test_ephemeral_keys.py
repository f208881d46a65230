"""Ephemeral keys: minted for a lifetime, single use, kept as digests only."""

from __future__ import annotations

import pytest
from openai.types.realtime import ClientSecretCreateResponse

from api.ephemeral import EphemeralKeys, KeyRefused, TooManyKeys, is_ephemeral, parse_mint


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_key_expires_and_opens_one_session() -> None:
    """A key redeems once for its session, then is 'used'; past its lifetime it is 'expired';
    lifetimes of 9 and 7201 s are refused, and the key's text is kept nowhere."""
    clock = Clock()
    keys = EphemeralKeys(clock)
    session = {"type": "realtime", "instructions": "Be brief."}
    first = keys.mint(60, session)
    assert is_ephemeral(first.value), first.value
    assert len(first.value) == 3 + 32, first.value
    assert first.expires_at == int(clock.now) + 60
    ClientSecretCreateResponse.model_validate(first.answer())  # OpenAI's answer shape
    keys.check(first.value)  # checking does not use it up
    assert keys.redeem(first.value)["instructions"] == "Be brief."
    with pytest.raises(KeyRefused) as used:
        keys.redeem(first.value)
    with pytest.raises(KeyRefused, match="already used"):
        keys.check(first.value)
    assert (used.value.code, used.value.message) == ("used_key", "ephemeral key already used")

    second = keys.mint(60, {})
    clock.now += 61
    with pytest.raises(KeyRefused) as expired:
        keys.redeem(second.value)
    assert (expired.value.code, expired.value.message) == ("expired_key", "ephemeral key expired")
    with pytest.raises(KeyRefused) as unknown:
        keys.redeem("ek_" + "0" * 32)
    assert unknown.value.code == "invalid_key"

    for seconds in (9, 7201):
        with pytest.raises(ValueError, match=r"expires_after\.seconds"):
            parse_mint({"expires_after": {"anchor": "created_at", "seconds": seconds}})
        with pytest.raises(ValueError, match="seconds"):
            keys.mint(seconds, {})
    assert parse_mint({}) == (600, {})
    assert parse_mint({"expires_after": {"seconds": 10}, "session": {"type": "realtime"}})[0] == 10

    third = keys.mint(7200, {})
    stored = repr(keys.__dict__)
    for value in (first.value, second.value, third.value):
        assert value[3:] not in stored, "a key is kept as text"


def test_mint_requests_name_the_wrong_field() -> None:
    """Bad mint bodies are refused with the field named; a full store refuses to mint."""
    cases = {
        "body": [],
        "colour": {"colour": 1},
        "expires_after: must": {"expires_after": 5},
        r"expires_after\.anchor": {"expires_after": {"anchor": "now"}},
        r"expires_after\.seconds": {"expires_after": {"seconds": "60"}},
        "session: must": {"session": "x"},
        "expires_after: must be": {"expires_after": None},
        "session: must be": {"session": None},
        r"session\.type": {"session": {"type": "transcription"}},
    }
    for field, body in cases.items():
        with pytest.raises(ValueError, match=field):
            parse_mint(body)
    clock = Clock()
    keys = EphemeralKeys(clock, limit=2)
    keys.mint(10, {})
    keys.mint(10, {})
    with pytest.raises(TooManyKeys):
        keys.mint(10, {})
    clock.now += 10  # both expired: pruned on the next mint
    keys.mint(10, {})
    assert len(keys) == 1


def test_used_and_expired_keys_never_count_against_the_cap() -> None:
    """5,000 keys minted and used one after another, past a cap of 4, are all minted: a used
    key leaves the store at once and an expired one on the next mint; only live unused keys
    fill it, and a full store says how long until its soonest key expires."""
    clock = Clock()
    keys = EphemeralKeys(clock, limit=4)
    minted = 0
    for _ in range(5000):
        key = keys.mint(600, {})
        minted += 1
        keys.redeem(key.value)
    assert minted == 5000, f"{minted} of 5000 minted"
    assert len(keys) == 0, f"{len(keys)} keys held after all were used"
    with pytest.raises(KeyRefused, match="already used"):
        keys.redeem(key.value)  # still told it is used, not unknown
    for _ in range(3):
        keys.mint(10, {})
    clock.now += 5
    keys.mint(60, {})
    with pytest.raises(TooManyKeys) as full:
        keys.mint(60, {})
    assert full.value.retry_after == 5, full.value.retry_after  # the 10 s keys go first
    clock.now += 5  # three expired: room again
    for _ in range(3):
        keys.mint(60, {})
    assert len(keys) == 4


def test_used_keys_are_remembered_within_a_bound_and_refused_after_it() -> None:
    """At most ``remembered`` used keys are kept to answer 'already used'; an older one is
    forgotten and refused all the same, as unknown, and none is kept past its expiry."""
    clock = Clock()
    keys = EphemeralKeys(clock, remembered=2)
    values = [keys.mint(60, {}).value for _ in range(3)]
    for value in values:
        keys.redeem(value)
    with pytest.raises(KeyRefused) as forgotten:
        keys.redeem(values[0])
    assert forgotten.value.code == "invalid_key"
    for value in values[1:]:
        with pytest.raises(KeyRefused, match="already used"):
            keys.check(value)
    clock.now += 60
    keys.mint(10, {})  # prunes
    assert vars(keys)["_used"] == {}, "used keys kept past their expiry"


def test_a_restored_key_opens_its_session_again_until_it_expires() -> None:
    """A redeemed key given back opens its session once more and is then used; a key given
    back after its expiry is refused as expired and dropped."""
    clock = Clock()
    keys = EphemeralKeys(clock)
    key = keys.mint(60, {"instructions": "Be brief."}).value
    session = keys.redeem(key)
    keys.restore(key, session)
    assert len(keys) == 1
    assert keys.redeem(key)["instructions"] == "Be brief."
    with pytest.raises(KeyRefused, match="already used"):
        keys.check(key)
    late = keys.mint(10, {}).value
    session = keys.redeem(late)
    clock.now += 11
    keys.restore(late, session)
    with pytest.raises(KeyRefused) as expired:
        keys.check(late)
    assert expired.value.code == "expired_key", expired.value.code
    assert len(keys) == 0
