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
import os
import re
import secrets
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from pydantic import ValidationError

from config import loader
from config.schema import SECRET_KEYS, ApiSettings, Settings

FINAL_STATUSES = frozenset({"completed", "busy", "no_answer", "failed"})
_KEY = re.compile(r"[0-9*#]")
_IDEMPOTENCY_KEY = re.compile(r"[!-~]{1,255}")  # the spec's pattern for the header
_TOKEN = re.compile(r"[!-~]*")  # what an HTTP header carries as is


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


def check_token(token: str) -> str:
    """The bearer token as a header can carry it: visible ASCII characters (or none)."""
    if not _TOKEN.fullmatch(token):
        raise UsageError("--token/api.token: must be visible ASCII characters")
    return token


def check_url(url: str) -> str:
    """``--url`` as the client can use it: ``http(s)://HOST[:PORT]``."""
    try:
        parts = urlsplit(url)
        usable = parts.scheme in ("http", "https") and bool(parts.hostname)
        _ = parts.port  # a port that is no number raises
    except ValueError:
        usable = False
    if not usable:
        raise UsageError("--url: must be http(s)://HOST[:PORT]")
    return url


def load_api_settings(path: Path | None, environ: Mapping[str, str] | None = None) -> ApiSettings:
    """The ``[api]`` settings alone, read by the daemon's own loader: the file's ``[api]``
    table, the ``SIPAI_API__*`` overrides, ``api.token_file``/``token_files`` and the
    ``api.token``/``api.tokens.*`` credentials. The other sections are neither read nor
    validated: on a service box their secrets are the service's credentials, which an
    admin's shell does not see. Raises :class:`config.ConfigError` naming key and source."""
    env = os.environ if environ is None else environ
    prefix = loader.ENV_PREFIX
    env = {
        name: value
        for name, value in env.items()
        if not name.startswith(prefix) or name[len(prefix) :].lower().startswith("api__")
    }
    raw: dict[str, Any] = {}
    sources: dict[loader.Key, str] = {}
    if path is not None:
        table = loader._read_toml(path).get("api")
        if table is not None:
            raw["api"] = table
            keys = [("api", key) for key in table] if isinstance(table, dict) else [("api",)]
            sources |= dict.fromkeys(keys, str(path))
    problems: list[str] = []
    loader._apply_env(raw, sources, env, problems)
    # The secrets pass skips a section that is no table: only [api]'s secrets are resolved.
    skipped = {section: () for section, _ in SECRET_KEYS if section != "api"}
    raw |= skipped
    loader._resolve_secrets(raw, sources, path, env, problems)
    raw = {key: value for key, value in raw.items() if key not in skipped}
    loader._resolve_named_tokens(raw, sources, path, env, problems)
    api: ApiSettings | None = None
    try:
        api = Settings.model_validate(raw).api
    except ValidationError as exc:
        problems.extend(loader._describe(exc, sources, path))
    if problems or api is None:
        raise loader.ConfigError(problems)
    return api


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
    try:
        host = urlsplit(url).hostname or ""
        if host == "localhost":
            return True
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
    client: Client, call_id: str, poll_seconds: float = 0.5, limit_seconds: float = 900.0
) -> Iterator[tuple[float, dict[str, Any]]]:
    """Each change of the call's ``call_status`` as (seconds since start, its view), polling
    ``GET /call/{id}``; ends with the final view. Stops with the call (the daemon bounds every
    call: ring timeout, message, rounds), on Ctrl-C, or with :class:`ApiError` when the call
    is still not final after ``limit_seconds`` (a wrong ``--url``, a call the daemon lost)."""
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
        if time.monotonic() - start >= limit_seconds:
            raise ApiError(None, f"still {status or 'not final'} after {limit_seconds:g} s")
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
        raw_text = view.get("choice_raw_text") or ""
        parts.append(f"heard={json.dumps(raw_text, ensure_ascii=False)}")
    if "answered_by" in view:
        parts.append(f"answered_by={view['answered_by'] or '-'}")
    if view.get("duration_seconds") is not None:
        parts.append(f"duration={float(view['duration_seconds']):.1f}s")
    if status != "completed" and view.get("sip_code") is not None:
        parts.append(f"sip={view['sip_code']}")
    if view.get("error"):
        parts.append(f"error={json.dumps(view['error'], ensure_ascii=False)}")
    return "  ".join([line, " ".join(parts)]) if parts else line


TABLE_COLUMNS = ("CREATED", "CALL_ID", "DIR", "EXTENSION", "STATUS", "SIP", "DURATION", "CHOICE")


def calls_table(calls: list[dict[str, Any]], direction: str = "outbound") -> str:
    """``sipai calls``: one row per call, newest first (the API's order), columns aligned.
    Inbound and web calls all reach the same extension: their rows show the CALLER."""
    party = "extension" if direction == "outbound" else "caller"
    rows = [tuple(party.upper() if c == "EXTENSION" else c for c in TABLE_COLUMNS)]
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
                str(call.get(party) or "-"),
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
    ``--callback-url`` (the contract needs a URL): it answers 200 to a POST on its own
    unguessable path (404 elsewhere, 400 without a usable Content-Length) and keeps the
    bodies; the CLI reads the result from ``GET /call/{id}`` anyway."""

    bodies: list[bytes] = field(default_factory=list)
    received: threading.Event = field(default_factory=threading.Event)

    @contextlib.contextmanager
    def serving(self) -> Iterator[str]:
        receiver = self
        path = f"/sipai-result/{secrets.token_urlsafe(16)}"

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = self.headers.get("Content-Length") or "0"
                code = 200 if length.isdigit() else 400
                if self.path != path:
                    code = 404
                if code == 200:
                    receiver.bodies.append(self.rfile.read(int(length)))
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()
                if code == 200:
                    receiver.received.set()

            def log_message(self, format: str, *args: Any) -> None:
                return

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=server.serve_forever, name="sipai-cli-receiver")
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}{path}"
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
