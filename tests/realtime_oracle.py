"""The official ``openai`` package's typed models as the judge of every realtime event.

``check_client_event`` validates an event a client sends, ``check_server_event`` one a server
sends, for the GA (``openai.types.realtime``) or beta (``openai.types.beta.realtime``)
dialect. The package's models accept unknown fields; here an unknown field anywhere in the
event is an error too, because the real service rejects it.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache
from typing import Any

from openai.types.beta.realtime import realtime_client_event as beta_client
from openai.types.beta.realtime import realtime_server_event as beta_server
from openai.types.realtime import realtime_client_event as ga_client
from openai.types.realtime import realtime_server_event as ga_server
from pydantic import BaseModel, TypeAdapter

_TYPES = {
    ("ga", "client"): ga_client.RealtimeClientEvent,
    ("ga", "server"): ga_server.RealtimeServerEvent,
    ("beta", "client"): beta_client.RealtimeClientEvent,
    ("beta", "server"): beta_server.RealtimeServerEvent,
}


@cache
def _adapter(dialect: str, side: str) -> TypeAdapter[Any]:
    return TypeAdapter(_TYPES[(dialect, side)])


def _extras(value: Any, path: str) -> Iterator[str]:
    if isinstance(value, BaseModel):
        for key in value.model_extra or {}:
            yield f"{path}.{key}"
        for name in type(value).model_fields:
            yield from _extras(getattr(value, name), f"{path}.{name}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _extras(item, f"{path}[{index}]")


def _check(event: dict[str, Any], dialect: str, side: str) -> BaseModel:
    model = _adapter(dialect, side).validate_python(event)
    unknown = list(_extras(model, "event"))
    if unknown:
        raise ValueError(f"{event.get('type')}: fields the {dialect} protocol lacks: {unknown}")
    assert isinstance(model, BaseModel)
    return model


def check_client_event(event: dict[str, Any], dialect: str) -> BaseModel:
    return _check(event, dialect, "client")


def check_server_event(event: dict[str, Any], dialect: str) -> BaseModel:
    return _check(event, dialect, "server")
