"""The README's examples stay true: the PBX snippets it shows are the files in config/pbx byte
for byte, every curl line calls a route and method of api/openapi.yaml (and together they
cover every route but the console's), ``POST /call`` bodies pass the request model, and every
TOML snippet passes the daemon's own config loader."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from urllib.parse import urlsplit

from api.models import parse_request
from api.spec import load_spec
from config import load_settings

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
SNIPPETS = [
    "config/pbx/kamailio/kamailio.cfg",
    "config/pbx/asterisk/pjsip.conf",
    "config/pbx/asterisk/extensions.conf",
    "config/pbx/freeswitch/1000.xml",
]
CONSOLE_ROUTES = {"/web/calls", "/web/calls/{call}"}  # the console page's own, not for curl


def _embedded() -> dict[str, str]:
    """Each ``\\`config/pbx/...\\`:`` label and the fenced block after it."""
    found = re.findall(r"^`(config/pbx/[^`]+)`:\n\n```[a-z]*\n(.*?)^```$", README, re.M | re.S)
    return dict(found)


def test_readme_pbx_blocks_are_the_shipped_files() -> None:
    """Every file under config/pbx is shown in the README, and each block equals its file."""
    files = sorted(
        str(p.relative_to(REPO)) for p in (REPO / "config" / "pbx").rglob("*") if p.is_file()
    )
    embedded = _embedded()
    assert sorted(embedded) == files
    assert set(SNIPPETS) <= set(files), files
    for name, block in embedded.items():
        assert block == (REPO / name).read_text(), f"README's {name} differs from the file"


def _shell_commands() -> list[list[str]]:
    """The commands of the README's ``sh`` blocks, continuation lines and multi-line quotes
    joined, comments dropped."""
    commands: list[list[str]] = []
    for block in re.findall(r"^```sh\n(.*?)^```$", README, re.M | re.S):
        pending = ""
        for line in block.splitlines():
            if not pending and line.lstrip().startswith("#"):
                continue
            pending += line + "\n"
            if pending.rstrip().endswith("\\"):
                continue
            try:
                words = shlex.split(pending.replace("\\\n", " "), comments=True)
            except ValueError:  # an open quote: the command goes on
                continue
            if words:
                commands.append(words)
            pending = ""
        assert not pending, f"unterminated command in a README sh block: {pending!r}"
    return commands


def _curls() -> list[tuple[str, str, list[str]]]:
    """(method, path, words) of every curl command of the README."""
    curls = []
    for words in _shell_commands():
        if words[0] != "curl":
            continue
        method = "GET"
        if "-X" in words:
            method = words[words.index("-X") + 1]
        elif {"-d", "--data", "--data-binary", "-F"} & set(words):
            method = "POST"
        urls = [w for w in words if w.startswith("http://")]
        assert len(urls) == 1, words
        curls.append((method, urlsplit(urls[0]).path, words))
    return curls


def _route(path: str) -> str | None:
    for template in load_spec()["paths"]:
        pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, path):
            return str(template)
    return None


def test_every_readme_curl_calls_a_route_of_the_spec() -> None:
    """Each curl's method and path is in api/openapi.yaml, and every route but the console's
    has an example."""
    paths = load_spec()["paths"]
    seen = set()
    curls = _curls()
    assert len(curls) >= 15, curls
    for method, path, words in curls:
        route = _route(path)
        assert route is not None, f"{path} is no route of api/openapi.yaml: {words}"
        assert method.lower() in paths[route], f"{method} {route} is not in the spec: {words}"
        seen.add((method.lower(), route))
    routes = {(m, r) for r, ops in paths.items() if r not in CONSOLE_ROUTES for m in ops}
    routes -= {("parameters", r) for r in paths}
    assert routes - seen == set(), "routes without a curl example in the README"


def test_readme_call_bodies_are_valid_requests() -> None:
    """Every JSON body the README posts to /call passes the request model, and the examples
    include a choice with keys, machine detection and an Idempotency-Key."""
    bodies = []
    headers = []
    for method, path, words in _curls():
        if (method, path) != ("POST", "/call"):
            continue
        body = json.loads(words[words.index("-d") + 1])
        parse_request(body)
        bodies.append(body)
        headers += [words[i + 1] for i, w in enumerate(words) if w == "-H"]
    assert any(o.get("dtmf") for b in bodies for o in b.get("choice", {}).get("options", []))
    assert any(b.get("machine_detection") for b in bodies)
    assert any(h.startswith("Idempotency-Key: ") for h in headers)


def test_readme_toml_snippets_load(tmp_path: Path) -> None:
    """Each TOML snippet of the README (the softphone's and the PBX example's) is a valid
    sipai.toml for the daemon's loader."""
    blocks = re.findall(r"^```toml\n(.*?)^```$", README, re.M | re.S)
    assert len(blocks) >= 2, blocks
    for block in blocks:
        config = tmp_path / "sipai.toml"
        config.write_text(block)
        load_settings(config, environ={})


def test_readme_sipai_commands_parse() -> None:
    """Every `sipai` command the README shows is accepted by the CLI's parser."""
    from daemon.cli import _parser  # noqa: PLC0415 - the parser only, nothing is run

    commands = [w for w in _shell_commands() if w[0] == "sipai"]
    assert any(w[1] == "call" for w in commands), commands
    for words in commands:
        _parser().parse_args(words[1:])
