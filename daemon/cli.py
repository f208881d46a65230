"""The ``sipai`` command line: ``run``, ``check-config`` and ``version``.

Exit status: 0 success, 1 a runtime failure (logged), 2 a usage or configuration error
(one line per problem on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path

from config import CONFIG_ENV, ConfigError, LoadedSettings, load_settings
from daemon import __version__
from daemon.logs import configure_logging, get_logger
from daemon.supervisor import Supervisor

EXIT_CONFIG = 2


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
    for sub in (run, check):
        sub.add_argument(
            "--config",
            metavar="PATH",
            help=f"TOML config file (default: ${CONFIG_ENV})",
        )
    commands.add_parser("version", help="print the version")
    return parser


def _config_path(arg: str | None) -> Path | None:
    value = arg if arg else os.environ.get(CONFIG_ENV, "")
    return Path(value) if value else None


def _run(loaded: LoadedSettings) -> int:
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
