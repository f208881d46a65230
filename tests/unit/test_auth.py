"""Named bearer tokens: which token a request offers, if any."""

from __future__ import annotations

import pytest

from api.auth import ApiTokens, offered_token


def test_each_named_token_is_recognised_by_its_name() -> None:
    """Two tokens valid at once each identify as their own name; anything else as None."""
    tokens = ApiTokens({"default": "old-secret", "crm-2027": "new-secret"})
    assert tokens.required
    assert tokens.identify("old-secret") == "default"
    assert tokens.identify("new-secret") == "crm-2027"
    assert tokens.identify("new-secre") is None
    assert tokens.identify("new-secret ") is None
    assert tokens.identify("") is None


def test_no_tokens_means_no_authentication() -> None:
    """An empty set requires nothing and names nobody."""
    tokens = ApiTokens()
    assert not tokens.required
    assert tokens.identify("anything") is None


def test_an_empty_token_is_refused() -> None:
    """A token that is the empty string would let every request in: it is an error."""
    with pytest.raises(ValueError, match="empty"):
        ApiTokens({"crm": ""})


def test_the_offered_token_comes_from_bearer_or_for_realtime_api_key() -> None:
    """Authorization: Bearer in any case of the scheme; api-key only where allowed."""
    assert offered_token({"authorization": "Bearer abc"}) == "abc"
    assert offered_token({"authorization": "bearer  abc "}) == "abc"
    assert offered_token({"authorization": "Basic abc"}) == ""
    assert offered_token({"api-key": "abc"}) == ""
    assert offered_token({"api-key": "abc"}, api_key_header=True) == "abc"


def test_a_browser_offers_its_key_as_a_websocket_subprotocol() -> None:
    """``openai-insecure-api-key.<token>`` next to ``realtime`` is a realtime client's token
    (browsers cannot set headers on a WebSocket); ordinary routes ignore it."""
    headers = {"sec-websocket-protocol": "realtime, openai-insecure-api-key.ek_abc123"}
    assert offered_token(headers, api_key_header=True) == "ek_abc123"
    assert offered_token(headers) == ""
    assert offered_token({"sec-websocket-protocol": "realtime"}, api_key_header=True) == ""
    both = {**headers, "authorization": "Bearer tok"}
    assert offered_token(both, api_key_header=True) == "tok"
