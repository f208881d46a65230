"""Log output: JSON lines off a terminal, readable text on one, context and levels."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from config.schema import LogFormat, LogLevel
from daemon.logs import configure_logging, get_logger


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)


def test_json_lines_with_bound_call_id() -> None:
    """Off a terminal each event is one JSON object carrying the context-bound call_id."""
    out = io.StringIO()
    configure_logging(LogLevel.INFO, LogFormat.AUTO, stream=out)
    structlog.contextvars.bind_contextvars(call_id="out-1-1")
    get_logger("test").info("call.answered", sip_code=200)
    logging.getLogger("uvicorn.error").info("library %s", "message")
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["event"] == "call.answered"
    assert (first["call_id"], first["sip_code"], first["level"]) == ("out-1-1", 200, "info")
    assert first["timestamp"].endswith("Z")
    assert second["event"] == "library message"
    assert second["logger"] == "uvicorn.error"


def test_console_on_a_terminal_and_level_filter() -> None:
    """On a terminal output is text, and events below the level are dropped."""
    out = _Terminal()
    configure_logging(LogLevel.WARNING, LogFormat.AUTO, stream=out)
    log = get_logger("test")
    log.info("call.hidden")
    log.warning("call.shown", reason="x")
    text = out.getvalue()
    assert "call.hidden" not in text
    assert "call.shown" in text
    assert not text.lstrip().startswith("{")
