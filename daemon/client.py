"""The REST client behind ``sipai call`` and ``sipai calls``: the documented API over httpx.

Pure helpers (the ``--option`` grammar, the base URL from ``[api]``, the progress lines)
and a small synchronous client. Nothing here loads the daemon's speech, SIP or store code:
an admin's shell command starts in a fraction of a second and works against a remote daemon
too (``--url`` and a token).
"""

from __future__ import annotations

import contextlib
import http.server
import ipaddress
import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

from config.schema import ApiSettings

FINAL_STATUSES = frozenset({"completed", "busy", "no_answer", "failed"})
_KEY = re.compile(r"[0-9*#]")
_IDEMPOTENCY_KEY = re.compile(r"[!-~]{1,255}")  # the spec's pattern for the header


class UsageError(ValueError):
    """A command line the daemon would refuse anyway, told before anything is sent."""


class ApiError(Exception):
    """The daemon could not be reached (``status`` None) or refused the request."""

    def __init__(self, status: int | None, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def parse_option(spec: str) -> dict[str, Any]:
    """``VALUE[:KEY][=SYNONYM,SYNONYM...]`` -> a choice option of ``POST /call``.

    ``confirmed:1=yes,yeah`` is the option ``confirmed``, picked by saying it, "yes" or
    "yeah", or by pressing 1. A value cannot hold ``:`` or ``=`` (they separate the parts).
    """
    head, has_synonyms, tail = spec.partition("=")
    value, has_key, key = head.partition(":")
    value = value.strip()
    if not value:
        raise UsageError(f"--option {spec!r}: the value before ':' or '=' is empty")
    option: dict[str, Any] = {"value": value}
    if has_key:
        if not _KEY.fullmatch(key):
            raise UsageError(
                f"--option {spec!r}: the key after ':' must be one of 0-9, * or # (got {key!r})"
            )
        option["dtmf"] = key
    if has_synonyms:
        synonyms = [s.strip() for s in tail.split(",")]
        if not all(synonyms):
            raise UsageError(f"--option {spec!r}: an empty synonym after '='")
        option["synonyms"] = synonyms
    return option


def parse_options(specs: list[str]) -> list[dict[str, Any]]:
    """Every ``--option`` in order; a key given to two options is refused."""
    options = [parse_option(spec) for spec in specs]
    keys = [o["dtmf"] for o in options if "dtmf" in o]
    for key in keys:
        if keys.count(key) > 1:
            raise UsageError(f"--option: key {key!r} is given to two options")
    return options


def check_idempotency_key(key: str) -> str:
    """The ``--idempotency-key`` as the API takes it: 1-255 visible ASCII characters."""
    if not _IDEMPOTENCY_KEY.fullmatch(key):
        raise UsageError("--idempotency-key: must be 1-255 visible ASCII characters")
    return key


def base_url(api: ApiSettings) -> str:
    """The URL a client on this machine reaches ``[api]`` at: a wildcard bind is loopback."""
    host = api.host.strip()
    if host in ("", "0.0.0.0"):  # noqa: S104 - a wildcard bind, reached on loopback
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{api.port}"


def default_token(api: ApiSettings) -> str:
    """The token the CLI sends: ``api.token`` (named ``default``), else the first named one."""
    return next(iter(api.named_tokens.values()), "")


def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Client:
    """``POST /call``, ``GET /call/{id}`` and ``GET /calls`` of one daemon."""

    def __init__(self, url: str, token: str = "", timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def post_call(self, body: dict[str, Any], idempotency_key: str | None = None) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._json("POST", "/call", json=body, headers=headers)

    def get_call(self, call_id: str) -> dict[str, Any]:
        return self._json("GET", f"/call/{call_id}")

    def list_calls(self, limit: int, direction: str) -> list[dict[str, Any]]:
        page = self._json("GET", "/calls", params={"limit": limit, "direction": direction})
        calls: list[dict[str, Any]] = page["calls"]
        return calls

    def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ApiError(None, f"cannot reach the daemon at {self.url}: {exc}") from exc
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code >= 400:
            detail = body.get("detail") if isinstance(body, dict) else None
            text = detail if isinstance(detail, str) else response.text.strip()
            raise ApiError(response.status_code, f"{response.status_code}: {text}")
        if not isinstance(body, dict):
            raise ApiError(response.status_code, f"{path}: the answer is not a JSON object")
        return body


def follow(
    client: Client, call_id: str, poll_seconds: float = 0.5
) -> Iterator[tuple[float, dict[str, Any]]]:
    """Each change of the call's ``call_status`` as (seconds since start, its view), polling
    ``GET /call/{id}``; ends with the final view. Stops with the call (the daemon bounds every
    call: ring timeout, message, rounds), or on Ctrl-C."""
    start = time.monotonic()
    last = ""
    while True:
        view = client.get_call(call_id)
        status = str(view.get("call_status", ""))
        final = view.get("status") == "not_found" or status in FINAL_STATUSES
        if status != last or final:
            last = status
            yield time.monotonic() - start, view
        if final:
            return
        time.sleep(poll_seconds)


def progress_line(view: dict[str, Any], elapsed: float) -> str:
    """``out-1764621000-3  ringing  20:31:02  +0.1s``, plus the result once final."""
    status = str(view.get("call_status") or view.get("status") or "")
    clock = datetime.now().strftime("%H:%M:%S")
    line = f"{view.get('call_id', '')}  {status}  {clock}  +{elapsed:.1f}s"
    if status not in FINAL_STATUSES:
        return line
    parts = []
    if "message_played" in view:
        parts.append(f"message_played={'yes' if view.get('message_played') else 'no'}")
    if view.get("choice_response") is not None or view.get("choice_raw_text") is not None:
        parts.append(f"choice={view.get('choice_response') or '-'}")
        parts.append(f"heard={json.dumps(view.get('choice_raw_text') or '')}")
    if "answered_by" in view:
        parts.append(f"answered_by={view['answered_by'] or '-'}")
    if view.get("duration_seconds") is not None:
        parts.append(f"duration={float(view['duration_seconds']):.1f}s")
    if status != "completed" and view.get("sip_code") is not None:
        parts.append(f"sip={view['sip_code']}")
    if view.get("error"):
        parts.append(f"error={json.dumps(view['error'])}")
    return "  ".join([line, " ".join(parts)]) if parts else line


TABLE_COLUMNS = ("CREATED", "CALL_ID", "DIR", "EXTENSION", "STATUS", "SIP", "DURATION", "CHOICE")


def calls_table(calls: list[dict[str, Any]]) -> str:
    """``sipai calls``: one row per call, newest first (the API's order), columns aligned."""
    rows = [TABLE_COLUMNS]
    for call in calls:
        created = call.get("created_at")
        when = (
            datetime.fromtimestamp(created).strftime("%Y-%m-%d %H:%M:%S")
            if isinstance(created, int | float)
            else str(created or "-")
        )
        duration = call.get("duration_seconds")
        rows.append(
            (
                when,
                str(call.get("call_id", "")),
                str(call.get("direction", "")),
                str(call.get("extension") or "-"),
                str(call.get("call_status") or call.get("status") or "-"),
                str(call.get("sip_code") or "-"),
                f"{float(duration):.1f}s" if isinstance(duration, int | float) else "-",
                str(call.get("choice_response") or "-"),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(TABLE_COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


@dataclass
class ResultReceiver:
    """A one-shot webhook receiver on 127.0.0.1 for a ``--wait`` call with a choice and no
    ``--callback-url`` (the contract needs a URL): it answers 200 to every POST and keeps
    the bodies; the CLI reads the result from ``GET /call/{id}`` anyway."""

    bodies: list[bytes] = field(default_factory=list)
    received: threading.Event = field(default_factory=threading.Event)

    @contextlib.contextmanager
    def serving(self) -> Iterator[str]:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                receiver.bodies.append(self.rfile.read(length))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
                receiver.received.set()

            def log_message(self, format: str, *args: Any) -> None:
                return

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=server.serve_forever, name="sipai-cli-receiver")
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}/sipai-result"
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
