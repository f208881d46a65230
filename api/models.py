"""Request bodies of the REST contract, validated exactly as the contract says.

Types are strict (``"30"`` is not an integer, ``30.0`` neither), unknown fields are errors,
ranges are the contract's. Beyond the contract, a request may carry ``record`` (record this
call or not; absent or null: ``[recordings] enabled`` decides), ``progress_events`` (the
statuses, ``ringing`` and ``answered``, POSTed to ``callback_url`` as they happen; they need
``callback_url``, as ``choice`` does) and ``machine_detection`` (``detect`` or ``voicemail``;
absent: off), and a choice option may carry ``dtmf`` (the keypad key that picks it).
:func:`describe` turns validation errors into one readable ``detail`` that names each field,
for the 400 response.
"""

from __future__ import annotations

import re
from typing import Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sip.target import request_uri

# A character that is not blank: Python's whitespace (which takes in the separators \x1c-\x1f
# and \x85) and ECMAScript's (which takes in \ufeff) both count as blank; the spec's pattern.
_NOT_BLANK = re.compile(r"[^\s\x1c-\x1f\x85\ufeff]")
_IDEMPOTENCY_KEY = re.compile(r"[!-~]{1,255}")
IDEMPOTENCY_HEADER = "Idempotency-Key"
_CALL_ID = re.compile(r"[A-Za-z0-9._:@-]{1,128}")
INBOUND_ID_PREFIX = "in-"  # the ids the workers give inbound calls (one id space for both)
# http(s)://[user@]host[:port][/path?query#fragment], no whitespace (the spec's pattern).
_CALLBACK_URL = re.compile(
    r"[Hh][Tt][Tt][Pp][Ss]?://([^\s/?#@\[\]]*@)?([^\s/?#@:\[\]]+|\[[0-9A-Fa-f:.]+\])"
    r"(:[0-9]*)?([/?#]\S*)?"
)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ChoiceOption(Strict):
    value: str = Field(min_length=1, max_length=200)
    synonyms: list[str] = Field(default_factory=list, max_length=50)
    dtmf: str | None = Field(default=None, pattern=r"^[0-9*#]$")

    @field_validator("synonyms")
    @classmethod
    def _synonyms(cls, value: list[str]) -> list[str]:
        if any(len(s) > 200 for s in value):
            raise ValueError("synonyms must be strings of at most 200 characters")
        return value  # a blank synonym is allowed and matches nothing


class ChoicePrompt(Strict):
    prompt: str = Field(min_length=1, max_length=2000)
    options: list[ChoiceOption] = Field(min_length=1, max_length=20)
    timeout_seconds: int = Field(default=30, ge=5, le=60)
    repeat_count: int = Field(default=2, ge=1, le=5)

    @field_validator("options")
    @classmethod
    def _keys_unique(cls, value: list[ChoiceOption]) -> list[ChoiceOption]:
        keys = [o.dtmf for o in value if o.dtmf is not None]
        for key in keys:
            if keys.count(key) > 1:
                raise ValueError(f"dtmf key {key!r} is given twice")
        return value


class OutboundCallRequest(Strict):
    message: str = Field(min_length=1, max_length=5000)
    extension: str = Field(min_length=1, max_length=256)
    callback_url: str | None = Field(default=None, max_length=2048)
    ring_timeout: int = Field(default=30, ge=5, le=120)
    choice: ChoicePrompt | None = None
    call_id: str | None = None
    record: bool | None = None
    progress_events: list[Literal["ringing", "answered"]] | None = Field(default=None, max_length=2)
    machine_detection: Literal["detect", "voicemail"] | None = None

    @field_validator("message")
    @classmethod
    def _message(cls, value: str) -> str:
        if not _NOT_BLANK.search(value):
            raise ValueError("must not be blank")
        return value

    @field_validator("extension")
    @classmethod
    def _extension(cls, value: str) -> str:
        request_uri(value, "example.invalid")  # raises ValueError with the reason
        return value.strip()

    @field_validator("callback_url")
    @classmethod
    def _callback_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value) if _CALLBACK_URL.fullmatch(value) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        return value

    @field_validator("call_id")
    @classmethod
    def _call_id(cls, value: str | None) -> str | None:
        if value is not None and not _CALL_ID.fullmatch(value):
            raise ValueError("must be 1-128 characters of letters, digits and . _ : @ -")
        if value is not None and value.startswith(INBOUND_ID_PREFIX):
            raise ValueError(f"must not begin with {INBOUND_ID_PREFIX!r} (inbound calls' ids)")
        return value

    @field_validator("progress_events")
    @classmethod
    def _progress_events(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError("each status may be listed once")
        return value

    @model_validator(mode="after")
    def _choice_needs_callback(self) -> Self:
        if self.choice is not None and self.callback_url is None:
            raise ValueError("callback_url is required when choice is specified")
        if self.progress_events is not None and self.callback_url is None:
            raise ValueError("callback_url is required when progress_events is specified")
        return self


def describe(exc: ValidationError) -> str:
    """One line per problem: ``field.path: reason``; cross-field rules stand alone."""
    problems = []
    for error in exc.errors():
        loc = ".".join(str(p) for p in error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown field"
        elif error["type"] == "missing":
            message = "field required"
        problems.append(f"{loc}: {message}" if loc else message)
    return "; ".join(problems)


def parse_request(data: Any) -> OutboundCallRequest:
    if not isinstance(data, dict):
        raise ValueError("the body must be a JSON object")
    return OutboundCallRequest.model_validate(data)


def idempotency_key(value: str | None) -> str | None:
    """The ``Idempotency-Key`` header's key (None when absent): 1-255 visible ASCII characters;
    one pair of surrounding double quotes (the structured-field string form) is dropped.
    ValueError with the detail for the 400 otherwise."""
    if value is None:
        return None
    if not _IDEMPOTENCY_KEY.fullmatch(value):
        raise ValueError(f"{IDEMPOTENCY_HEADER}: must be 1-255 visible ASCII characters")
    if len(value) > 2 and value.startswith('"') and value.endswith('"'):
        return value[1:-1]
    return value
