"""Structured logging: events with fields, JSON lines for journald, readable on a terminal.

Everything goes through the standard library's root handler, so records from uvicorn and
other libraries come out in the same format as ours. When the output stream is the journal
(systemd sets ``JOURNAL_STREAM`` to its device:inode), each line starts with its syslog
priority, ``<3>`` for an error to ``<7>`` for debug (sd-daemon(3)), which journald parses:
``journalctl -u sipai -p err`` then shows the errors only. Bind per-call context with
``structlog.contextvars.bind_contextvars(call_id=...)`` in the task that handles the call;
the context does not cross into the SIP or media threads.

No line is written more than a few times a second: :class:`RepeatLimit` on the root handler
drops the repeats of an identical record (same logger, level and content) beyond ``burst``
per ``window`` seconds, and a ``log.suppressed`` event gives their count afterwards. A flood
of one error (a full file table, a scan) thus costs a few lines a second, not megabytes.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

import structlog

from config.schema import LogFormat, LogLevel

_LEVELS = {
    LogLevel.DEBUG: logging.DEBUG,
    LogLevel.INFO: logging.INFO,
    LogLevel.WARNING: logging.WARNING,
    LogLevel.ERROR: logging.ERROR,
}

# sd-daemon(3) priorities by the lowest logging level they cover, most severe first.
_PRIORITIES = (
    (logging.CRITICAL, 2),  # SD_CRIT
    (logging.ERROR, 3),  # SD_ERR
    (logging.WARNING, 4),  # SD_WARNING
    (logging.INFO, 6),  # SD_INFO
)
_DEBUG_PRIORITY = 7  # SD_DEBUG


def configure_logging(
    level: LogLevel = LogLevel.INFO,
    fmt: LogFormat = LogFormat.AUTO,
    stream: TextIO | None = None,
) -> None:
    """Route structlog and stdlib logging to ``stream`` (stdout by default) in one format."""
    out = sys.stdout if stream is None else stream
    use_json = fmt is LogFormat.JSON or (fmt is LogFormat.AUTO and not out.isatty())

    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        _drop_color_message,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor
    if use_json:
        shared += [structlog.processors.dict_tracebacks]
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.UnicodeDecoder(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )

    handler = logging.StreamHandler(out)
    formatter: logging.Formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    if is_journal(out):
        formatter = _PriorityPrefix(formatter)
    handler.setFormatter(formatter)
    handler.addFilter(RepeatLimit())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(_LEVELS[level])

    # uvicorn installs its own handlers unless told otherwise; ours are enough.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lib = logging.getLogger(name)
        lib.handlers.clear()
        lib.propagate = True
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)


@dataclass
class _Window:
    started: float
    source: str
    line: str
    passed: int = 1
    suppressed: int = 0


class RepeatLimit(logging.Filter):
    """Passes an identical record at most ``burst`` times per ``window`` seconds.

    The repeats beyond are dropped and counted; once their window is over, the next record to
    reach the filter (of any kind) first logs ``log.suppressed`` with the count, the logger and
    the line. Records are identical when their logger, level and content are (a structlog
    event's fields but its timestamp and duration; a standard record's formatted message).
    Thread-safe: the SIP and media threads may log too.
    """

    def __init__(
        self,
        burst: int = 5,
        window: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        max_lines: int = 4096,
    ) -> None:
        super().__init__()
        self._burst = burst
        self._window = window
        self._clock = clock
        self._max_lines = max_lines
        self._lock = threading.Lock()  # guards _windows and _next_sweep
        self._windows: dict[tuple[Any, ...], _Window] = {}
        self._next_sweep = 0.0

    def filter(self, record: logging.LogRecord) -> bool:
        key, line = _identity(record)
        now = self._clock()
        with self._lock:
            over = self._sweep(now) if now >= self._next_sweep else []
            current = self._windows.get(key)
            if current is not None and now - current.started >= self._window:
                del self._windows[key]
                if current.suppressed:
                    over.append(current)
                current = None
            if current is None:
                if len(self._windows) >= self._max_lines:
                    self._forget_unsuppressed()
                self._windows[key] = _Window(now, record.name, line)
                passed = True
            elif current.passed < self._burst:
                current.passed += 1
                passed = True
            else:
                current.suppressed += 1
                passed = False
        for window in over:  # outside the lock: these records come through this filter too
            _log_suppressed(window, self._window)
        return passed

    def _sweep(self, now: float) -> list[_Window]:
        self._next_sweep = now + self._window
        over = [
            (key, window)
            for key, window in self._windows.items()
            if now - window.started >= self._window
        ]
        for key, _ in over:
            del self._windows[key]
        return [window for _, window in over if window.suppressed]

    def _forget_unsuppressed(self) -> None:
        """Bound the table under a flood of distinct lines: forget those with nothing dropped."""
        for key in [k for k, window in self._windows.items() if not window.suppressed]:
            del self._windows[key]


# Fields that differ between lines that say the same thing (a request's duration, say).
_VOLATILE_FIELDS = frozenset({"timestamp", "ms"})


def _identity(record: logging.LogRecord) -> tuple[tuple[Any, ...], str]:
    """The key that makes two records the same line, and the line's text for the count."""
    if isinstance(record.msg, dict):  # a structlog event, already processed
        fields = tuple(
            sorted((k, repr(v)) for k, v in record.msg.items() if k not in _VOLATILE_FIELDS)
        )
        return (record.name, record.levelno, fields), str(record.msg.get("event", ""))
    try:
        message = record.getMessage()
    except (TypeError, ValueError):  # arguments that do not fit: the handler reports it
        message = str(record.msg)
    return (record.name, record.levelno, message), message.split("\n", 1)[0][:200]


def _log_suppressed(window: _Window, seconds: float) -> None:
    get_logger(__name__).warning(
        "log.suppressed",
        source=window.source,
        line=window.line,
        count=window.suppressed,
        seconds=seconds,
    )


def is_journal(stream: TextIO) -> bool:
    """True when ``stream`` is the journal's stream connection (``JOURNAL_STREAM``)."""
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        status = os.fstat(stream.fileno())
    except (OSError, ValueError):  # no file descriptor (io.UnsupportedOperation), or closed
        return False
    return (status.st_dev, status.st_ino) == (int(device), int(inode))


def priority(levelno: int) -> int:
    """The syslog priority of a logging level: 3 for ERROR, 4 WARNING, 6 INFO, 7 DEBUG."""
    return next((p for lowest, p in _PRIORITIES if levelno >= lowest), _DEBUG_PRIORITY)


class _PriorityPrefix(logging.Formatter):
    """``<N>`` before every line of a record (a traceback too), N its syslog priority."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self._inner = inner

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in self._inner.format(record).split("\n"))


def _drop_color_message(
    logger: object, method: str, event: structlog.types.EventDict
) -> structlog.types.EventDict:
    """uvicorn passes an ANSI-coloured copy of each message as an extra; keep the plain one."""
    event.pop("color_message", None)
    return event


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A logger for a module; use event names like ``"call.answered"`` and keyword fields."""
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger
