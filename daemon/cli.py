"""The ``sipai`` command line: ``run``, ``check-config``, ``version``, and the API clients
``call`` (place an outbound call, optionally follow it to its result) and ``calls`` (list
recent calls).

Exit status: 0 success, 1 a runtime failure (logged; for ``call``/``calls``: the daemon
unreachable or refusing, its ``detail`` on stderr), 2 a usage or configuration error (one line
per problem on stderr, no traceback), 3 ``call --wait`` ended with another final status than
``completed`` (busy, no_answer, failed), 130 Ctrl-C (``call --wait`` stops following; the
call goes on in the daemon). The client commands import no daemon machinery
(speech, SIP, store): the supervisor is loaded by ``run`` only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path

from config import CONFIG_ENV, ConfigError, LoadedSettings, load_settings
from config.schema import ApiSettings
from daemon import __version__, client
from daemon.logs import configure_logging, get_logger

EXIT_CONFIG = 2
EXIT_FAILED = 1
EXIT_NOT_COMPLETED = 3
RECEIVER_WAIT_SECONDS = 30.0  # after the final status, for the result webhook to arrive


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    command: str = args.command
    if command == "version":
        print(f"sipai {__version__} (Python {platform.python_version()})")
        return 0
    path = _config_path(args.config)
    if command == "check-config" and path is None:
        parser.error(f"check-config needs --config PATH (or ${CONFIG_ENV})")
    try:
        if command in ("call", "calls"):
            return _client_command(args, client.load_api_settings(path))
        loaded = load_settings(path)
    except ConfigError as exc:
        print(f"sipai: configuration error ({len(exc.problems)}):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_CONFIG
    if command == "check-config":
        print(f"{path}: OK")
        return 0
    return _run(loaded)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sipai", description="SIP AI Assistant: an AI voice agent on a SIP extension."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser(
        "run", help="run the daemon (embedded defaults when no config is given)"
    )
    check = commands.add_parser("check-config", help="validate a config file and exit")
    call = commands.add_parser(
        "call",
        help="place an outbound call through the running daemon's API",
        description="POST /call to the running daemon (its [api] host, port and token from "
        "the same config); with --wait, print each status change and the result.",
    )
    call.add_argument("extension", metavar="EXTENSION", help="1001, +15551234 or a SIP URI")
    call.add_argument("message", metavar="MESSAGE", help="what the callee hears")
    call.add_argument("--choice", metavar="PROMPT", help="ask this after the message")
    call.add_argument(
        "--option",
        metavar="SPEC",
        action="append",
        default=[],
        help="a choice option, VALUE[:KEY][=SYNONYM,SYNONYM...], e.g. confirmed:1=yes,yeah",
    )
    call.add_argument("--timeout-seconds", type=int, metavar="N", help="listening per round")
    call.add_argument("--repeat", type=int, metavar="N", help="rounds of the prompt (1-5)")
    call.add_argument("--ring-timeout", type=int, metavar="N", help="seconds of ringing")
    call.add_argument("--machine-detection", choices=("detect", "voicemail"))
    call.add_argument("--callback-url", metavar="URL", help="where the result is POSTed")
    call.add_argument("--call-id", metavar="ID")
    call.add_argument("--idempotency-key", metavar="KEY")
    call.add_argument("--wait", action="store_true", help="follow the call to its result")
    call.add_argument(
        "--wait-timeout",
        type=float,
        default=900.0,
        metavar="N",
        help="with --wait: give up (exit 1) when the call is not final after N s (900)",
    )
    calls = commands.add_parser("calls", help="list recent calls, newest first")
    calls.add_argument("--limit", type=int, default=20, metavar="N")
    calls.add_argument("--direction", choices=("outbound", "inbound", "web"), default="outbound")
    for sub in (run, check, call, calls):
        sub.add_argument(
            "--config",
            metavar="PATH",
            help=f"TOML config file (default: ${CONFIG_ENV})",
        )
    for sub in (call, calls):
        sub.add_argument("--json", action="store_true", help="one JSON object per line")
        sub.add_argument("--url", help="the API's base URL (default: from [api] host and port)")
        sub.add_argument(
            "--token",
            help="bearer token (default: api.token, else the first named); a token here "
            "shows in ps and the shell history: prefer SIPAI_API__TOKEN_FILE",
        )
    commands.add_parser("version", help="print the version")
    return parser


def _config_path(arg: str | None) -> Path | None:
    value = arg if arg else os.environ.get(CONFIG_ENV, "")
    return Path(value) if value else None


def _client_command(args: argparse.Namespace, api: ApiSettings) -> int:
    url = args.url or client.base_url(api)
    token = args.token if args.token is not None else client.default_token(api)
    try:
        client.check_url(url)
        client.check_token(token)
        body = _call_body(args) if args.command == "call" else {}
        if args.command == "call" and body.get("choice") and not args.callback_url:
            if not args.wait:
                raise client.UsageError(
                    "--choice needs --callback-url URL (or --wait, which receives the result)"
                )
            if not client.is_loopback(url):
                raise client.UsageError(
                    f"--choice with --wait receives the result on 127.0.0.1, which {url} "
                    "cannot reach: give --callback-url URL"
                )
    except client.UsageError as exc:
        print(f"sipai {args.command}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    with client.Client(url, token) as api_client:
        try:
            if args.command == "calls":
                return _calls(api_client, args)
            return _call(api_client, args, body)
        except client.ApiError as exc:
            print(f"sipai {args.command}: {exc.detail}", file=sys.stderr)
            return EXIT_FAILED
        except KeyboardInterrupt:
            return 130


def _call_body(args: argparse.Namespace) -> dict[str, object]:
    body: dict[str, object] = {"extension": args.extension, "message": args.message}
    if args.option and not args.choice:
        raise client.UsageError("--option needs --choice PROMPT")
    if args.choice is not None:
        if not args.option:
            raise client.UsageError("--choice needs at least one --option SPEC")
        choice: dict[str, object] = {
            "prompt": args.choice,
            "options": client.parse_options(args.option),
        }
        if args.timeout_seconds is not None:
            choice["timeout_seconds"] = args.timeout_seconds
        if args.repeat is not None:
            choice["repeat_count"] = args.repeat
        body["choice"] = choice
    elif args.timeout_seconds is not None or args.repeat is not None:
        raise client.UsageError("--timeout-seconds and --repeat need --choice PROMPT")
    if args.idempotency_key is not None:
        client.check_idempotency_key(args.idempotency_key)
    for name, value in (
        ("ring_timeout", args.ring_timeout),
        ("machine_detection", args.machine_detection),
        ("callback_url", args.callback_url),
        ("call_id", args.call_id),
    ):
        if value is not None:
            body[name] = value
    return body


def _call(api: client.Client, args: argparse.Namespace, body: dict[str, object]) -> int:
    receiver = client.ResultReceiver()
    with contextlib.ExitStack() as stack:
        if body.get("choice") and "callback_url" not in body:
            body["callback_url"] = stack.enter_context(receiver.serving())
        posted = api.post_call(body, args.idempotency_key)
        call_id = str(posted["call_id"])
        if args.json:
            print(json.dumps(posted), flush=True)
        elif args.wait:
            print(client.progress_line({**posted, "call_status": "queued"}, 0.0), flush=True)
        else:
            print(f"{call_id}  {posted.get('status', 'queued')}")
        if not args.wait:
            return 0
        final: dict[str, object] = {}
        for elapsed, view in client.follow(api, call_id, limit_seconds=args.wait_timeout):
            if view.get("call_status") == "queued" and not final:
                final = view
                continue  # already printed from the POST's answer
            final = view
            line = json.dumps(view) if args.json else client.progress_line(view, elapsed)
            print(line, flush=True)
        own_receiver = "callback_url" in body and body["callback_url"] != args.callback_url
        if own_receiver and not receiver.received.wait(RECEIVER_WAIT_SECONDS):
            print(
                f"sipai call: the result webhook did not arrive within {RECEIVER_WAIT_SECONDS:g}"
                " s; the daemon will retry it to a closed port (--callback-url avoids this)",
                file=sys.stderr,
            )
    return 0 if final.get("call_status") == "completed" else EXIT_NOT_COMPLETED


def _calls(api: client.Client, args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= 200:
        print("sipai calls: --limit must be 1-200", file=sys.stderr)
        return EXIT_CONFIG
    calls = api.list_calls(args.limit, args.direction)
    if args.json:
        for call in calls:
            print(json.dumps(call))
    else:
        print(client.calls_table(calls, args.direction))
    return 0


def _run(loaded: LoadedSettings) -> int:
    from daemon.supervisor import Supervisor  # noqa: PLC0415 - run only, not the client commands

    settings = loaded.settings
    configure_logging(settings.log.level, settings.log.format)
    log = get_logger("daemon")
    if loaded.path is not None:
        source = str(loaded.path)
    elif loaded.sources:
        source = "embedded defaults with environment overrides"
    else:
        source = "embedded defaults (no config file)"
    sip = settings.sip
    log.info(
        "daemon.starting",
        version=__version__,
        pid=os.getpid(),
        config=source,
        sip_mode="direct" if sip.direct_mode else "registrar",
        sip_registrar=sip.registrar or None,
        sip_contact=f"sip:{sip.username}@{sip.bind}:{sip.port}",
        api=f"{settings.api.host}:{settings.api.port}",
        agent_backend=settings.agent.backend.value,
    )
    try:
        return asyncio.run(Supervisor(loaded).run())
    except KeyboardInterrupt:  # a signal before the handlers were installed
        return 130


if __name__ == "__main__":
    sys.exit(main())
