"""Log output: JSON lines off a terminal, readable text on one, context and levels."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

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


_EMIT = """
import logging, structlog
from config.schema import LogFormat, LogLevel
from daemon.logs import configure_logging, get_logger
configure_logging(LogLevel.DEBUG, LogFormat(FORMAT))
log = get_logger("test")
log.debug("level.debug")
log.info("level.info")
log.warning("level.warning")
log.error("level.error")
log.critical("level.critical")
logging.getLogger("pjsip").error("sip_transport.c  Error sending")
logging.getLogger("uvicorn.error").info("Started server process")
try:
    raise ValueError("boom")
except ValueError:
    log.exception("level.exception")
"""
_PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}


def _emit(tmp_path: Path, fmt: str, journal_of: str | None) -> list[str]:
    """Run the logging set-up in a process whose stdout is a file; JOURNAL_STREAM names the
    device:inode of ``journal_of`` ("stdout": that file itself)."""
    out = tmp_path / "stdout"
    out.touch()
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    if journal_of is not None:
        other = tmp_path / "other"
        other.touch()
        status = (out if journal_of == "stdout" else other).stat()
        env["JOURNAL_STREAM"] = f"{status.st_dev}:{status.st_ino}"
    with out.open("w") as stdout:
        subprocess.run(
            [sys.executable, "-c", _EMIT.replace("FORMAT", repr(fmt))],
            stdout=stdout,
            env=env,
            check=True,
            timeout=60,
        )
    return out.read_text().splitlines()


def test_journal_stream_lines_carry_their_syslog_priority(tmp_path: Path) -> None:
    """With stdout the journal's stream, every JSON line starts with <N>, N the syslog
    priority of its level (3 error ... 7 debug), for library records too."""
    lines = _emit(tmp_path, "json", "stdout")
    seen = []
    for line in lines:
        match = re.fullmatch(r"<(\d)>(\{.*\})", line)
        assert match, line
        event = json.loads(match[2])
        assert int(match[1]) == _PRIORITY[event["level"]], line
        seen.append((match[1], event["event"]))
    assert seen == [
        ("7", "level.debug"),
        ("6", "level.info"),
        ("4", "level.warning"),
        ("3", "level.error"),
        ("2", "level.critical"),
        ("3", "sip_transport.c  Error sending"),
        ("6", "Started server process"),
        ("3", "level.exception"),
    ], f"priorities seen: {seen}"


def test_journal_prefix_on_every_line_of_a_traceback(tmp_path: Path) -> None:
    """In console format a traceback spans lines: each one carries the record's priority."""
    lines = _emit(tmp_path, "console", "stdout")
    start = next(i for i, line in enumerate(lines) if "level.exception" in line)
    assert len(lines) - start > 3, lines
    assert all(line.startswith("<3>") for line in lines[start:]), lines[start:]
    assert all(re.match(r"<[2-7]>", line) for line in lines), lines


@pytest.mark.parametrize("journal_of", [None, "another file"])
def test_no_prefix_when_stdout_is_not_the_journal(tmp_path: Path, journal_of: str | None) -> None:
    """Without JOURNAL_STREAM, or when it names another stream than stdout (output
    redirected), lines are plain JSON."""
    for line in _emit(tmp_path, "json", journal_of):
        assert json.loads(line)["event"], line


def test_repeated_lines_are_limited_and_counted() -> None:
    """An identical line logged 1,000 times at once (asyncio's accept error, a structlog
    warning) is written 5 times; after its 1 s window one log.suppressed event counts the
    other 995; distinct lines (other call_ids) all pass."""
    out = io.StringIO()
    configure_logging(LogLevel.INFO, LogFormat.JSON, stream=out)
    log = get_logger("test")
    for _ in range(1000):
        logging.getLogger("asyncio").error("socket.accept() out of system resource")
        log.warning("api.connection_refused", reason="max_connections")
    for n in range(20):
        log.info("call.answered", call_id=f"out-1-{n}")
    time.sleep(1.1)  # past the window: the next record brings the counts
    log.info("after.window")
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    names = [e["event"] for e in events]
    written = {line: names.count(line) for line in set(names)}
    assert written["socket.accept() out of system resource"] == 5, written
    assert written["api.connection_refused"] == 5, written
    assert written["call.answered"] == 20, written
    counts = {e["line"]: e["count"] for e in events if e["event"] == "log.suppressed"}
    assert counts == {
        "socket.accept() out of system resource": 995,
        "api.connection_refused": 995,
    }, counts
    assert names[-1] == "after.window"
    print(f"2,020 records -> {len(events)} lines: {written}")


def test_lines_that_differ_only_in_duration_are_repeats() -> None:
    """api.request lines that differ only in their ms (a flood of refused requests) are
    limited like identical lines: 5 written of 200."""
    out = io.StringIO()
    configure_logging(LogLevel.INFO, LogFormat.JSON, stream=out)
    log = get_logger("test")
    for n in range(200):
        log.info("api.request", method="GET", path="/calls", status=401, ms=n / 10)
    names = [json.loads(line)["event"] for line in out.getvalue().splitlines()]
    assert names.count("api.request") == 5, names.count("api.request")
