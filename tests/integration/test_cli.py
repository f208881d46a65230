"""``sipai call`` and ``sipai calls`` as processes against the real API app served by uvicorn
on a free port, with a real SQLite store and a runner scripted step by step from the test."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from api.app import ApiContext, HealthReport, create_app
from api.spec import load_spec
from api.webhooks import Deliverer
from daemon import client
from daemon.cli import main
from daemon.outbound import CallResult, OutboundService, Report
from daemon.store import Store

REPO = Path(__file__).resolve().parents[2]
TOKEN = "cli-test-token"
LINE_SECONDS = 15.0


class SteppedRunner:
    """Moves each call on (ringing, answered, result) only when the test says so."""

    def __init__(self) -> None:
        self.result = CallResult("completed", duration_seconds=8.7, message_played=True)
        self.step = asyncio.Queue[str]()
        self.requests: list[dict[str, Any]] = []

    async def run(self, call_id: str, request: dict[str, Any], report: Report) -> CallResult:
        self.requests.append(request)
        for status in ("ringing", "answered"):
            assert await self.step.get() == status
            await report(status, **({"answered_at": 1.0} if status == "answered" else {}))
        assert await self.step.get() == "result"
        return self.result


class Served:
    def __init__(self, runner: SteppedRunner, store: Store, port: int, config: Path) -> None:
        self.runner = runner
        self.store = store
        self.port = port
        self.config = config

    async def cli(self, *args: str) -> asyncio.subprocess.Process:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SIPAI_")} | {
            "PYTHONPATH": str(REPO)
        }
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "daemon",
            *args,
            "--config",
            str(self.config),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            cwd=REPO,
        )


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    store = Store(tmp_path / "sipai.db")
    await store.open()
    runner = SteppedRunner()
    deliverer = Deliverer(store, "secret", waits=(0.2,) * 7)
    service = OutboundService(store, runner, 4, on_final=deliverer.wake, max_queued=240)
    await service.recover()
    service.start()
    deliverer.start()
    ctx = ApiContext(
        health=lambda: HealthReport("healthy", False, "test", 1.0, 0, 0, []),
        store=store,
        outbound=service,
        tokens={"default": TOKEN},
        max_body_bytes=65536,
        spec=load_spec(),
    )
    server = uvicorn.Server(
        uvicorn.Config(create_app(ctx), host="127.0.0.1", port=0, log_config=None)
    )
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(10):
        while not server.started:
            await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    config = tmp_path / "sipai.toml"
    config.write_text(f'[api]\nhost = "0.0.0.0"\nport = {port}\ntoken = "{TOKEN}"\n')
    try:
        yield Served(runner, store, port, config)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        await service.stop()
        await deliverer.stop()
        await store.close()


async def _line(process: asyncio.subprocess.Process) -> str:
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), LINE_SECONDS)
    return line.decode().rstrip("\n")


async def _follow(served: Served, process: asyncio.subprocess.Process) -> list[str]:
    """Read the queued line, then release each step once the CLI has printed the last."""
    lines = [await _line(process)]
    for step in ("ringing", "answered", "result"):
        served.runner.step.put_nowait(step)
        lines.append(await _line(process))
    return lines


async def _finish(process: asyncio.subprocess.Process) -> tuple[int, str]:
    assert process.stderr is not None
    stderr = await asyncio.wait_for(process.stderr.read(), LINE_SECONDS)
    code = await asyncio.wait_for(process.wait(), LINE_SECONDS)
    return code, stderr.decode()


async def test_call_wait_prints_each_status_then_the_result_and_exits_0(served: Served) -> None:
    """`sipai call --wait` (port and token from the config) prints queued, ringing, answered,
    then the result line with the choice heard, and exits 0 on completed."""
    served.runner.result = CallResult(
        "completed",
        duration_seconds=8.7,
        message_played=True,
        choice_response="confirmed",
        choice_raw_text="yes I confirm",
    )
    process = await served.cli(
        "call",
        "1001",
        "Your appointment is tomorrow at ten.",
        "--choice",
        "Say yes or press 1 to confirm, no or 2 to cancel.",
        "--option",
        "confirmed:1=yes,yeah",
        "--option",
        "cancelled:2=no",
        "--wait",
    )
    lines = await _follow(served, process)
    code, stderr = await _finish(process)
    print("\n".join(lines))
    statuses = [line.split()[1] for line in lines]
    assert statuses == ["queued", "ringing", "answered", "completed"], lines
    assert lines[0].startswith("out-"), lines
    assert all(line.split()[0] == lines[0].split()[0] for line in lines), lines
    assert 'message_played=yes choice=confirmed heard="yes I confirm"' in lines[3], lines
    assert "duration=8.7s" in lines[3], lines
    assert (code, stderr) == (0, ""), (code, stderr)
    choice = served.runner.requests[0]["choice"]
    assert choice["options"] == [
        {"value": "confirmed", "synonyms": ["yes", "yeah"], "dtmf": "1"},
        {"value": "cancelled", "synonyms": ["no"], "dtmf": "2"},
    ], choice
    assert served.runner.requests[0]["callback_url"].startswith("http://127.0.0.1:")


async def test_call_wait_json_prints_one_view_per_change_and_exits_3_on_busy(
    served: Served,
) -> None:
    """With --json each change is one JSON object (the POST's answer first, then the views of
    GET /call/{id}); a busy callee exits 3; the request's other flags reach the call."""
    served.runner.result = CallResult("busy", sip_code=486)
    process = await served.cli(
        "call",
        "1002",
        "Hello.",
        "--wait",
        "--json",
        "--machine-detection",
        "detect",
        "--ring-timeout",
        "20",
        "--call-id",
        "cli-busy",
        "--idempotency-key",
        '"order-4711"',
    )
    lines = await _follow(served, process)
    code, stderr = await _finish(process)
    views = [json.loads(line) for line in lines]
    assert views[0]["status"] == "queued", views
    assert [v["call_status"] for v in views[1:]] == ["ringing", "answered", "busy"], views
    assert views[3]["sip_code"] == 486, views
    assert (code, stderr) == (3, ""), (code, stderr)
    request = served.runner.requests[0]
    assert (request["machine_detection"], request["ring_timeout"]) == ("detect", 20), request
    assert views[0]["call_id"] == "cli-busy", views


async def test_call_without_wait_prints_the_answer_and_calls_lists_it(served: Served) -> None:
    """Without --wait the CLI prints the call id and `queued`; `sipai calls` shows it in its
    table, newest first."""
    process = await served.cli("call", "1003", "Hello there.", "--call-id", "cli-first")
    code, stderr = await _finish(process)
    assert (code, stderr) == (0, ""), (code, stderr)
    for step in ("ringing", "answered", "result"):
        served.runner.step.put_nowait(step)
    async with asyncio.timeout(LINE_SECONDS):
        while (await served.store.get_call("cli-first") or {}).get("status") != "completed":
            await asyncio.sleep(0.05)
    listing = await served.cli("calls")
    assert listing.stdout is not None
    out = (await asyncio.wait_for(listing.stdout.read(), LINE_SECONDS)).decode()
    code, stderr = await _finish(listing)
    print(out)
    rows = out.splitlines()
    assert rows[0].split() == [
        "CREATED",
        "CALL_ID",
        "DIR",
        "EXTENSION",
        "STATUS",
        "SIP",
        "DURATION",
        "CHOICE",
    ], rows
    assert rows[1].split()[2:6] == ["cli-first", "outbound", "1003", "completed"], rows
    assert (code, stderr) == (0, ""), (code, stderr)


async def test_refused_and_unreachable_exit_1_with_the_detail(
    served: Served, tmp_path: Path
) -> None:
    """A wrong token gets the daemon's 401 detail on stderr and exit 1; a daemon that is not
    there exits 1 naming the URL."""
    process = await served.cli("calls", "--token", "wrong")
    code, stderr = await _finish(process)
    assert code == 1, (code, stderr)
    assert stderr.startswith("sipai calls: 401: "), stderr
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    process = await served.cli("call", "1001", "Hi.", "--url", f"http://127.0.0.1:{dead}")
    code, stderr = await _finish(process)
    assert code == 1, (code, stderr)
    assert f"cannot reach the daemon at http://127.0.0.1:{dead}" in stderr, stderr


def test_the_client_commands_load_no_daemon_machinery() -> None:
    """Importing the CLI loads neither the supervisor nor numpy, speech or pjsua2."""
    code = (
        "import sys, daemon.cli; heavy = [m for m in ('daemon.supervisor', 'numpy', 'pjsua2', "
        "'piper', 'faster_whisper', 'daemon.store') if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        env=os.environ | {"PYTHONPATH": str(REPO)},
        timeout=60,
    ).stdout
    assert out.strip() == "[]", out


@contextlib.contextmanager
def _stuck_daemon() -> Iterator[tuple[str, list[dict[str, str]]]]:
    """A loopback HTTP server that queues every POST /call and reports it ringing forever,
    recording each request's headers."""
    seen: list[dict[str, str]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self, body: dict[str, str]) -> None:
            seen.append(dict(self.headers))
            data = json.dumps(body).encode()
            self.send_response(202 if self.command == "POST" else 200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self._answer({"call_id": "c1", "status": "queued"})

        def do_GET(self) -> None:
            self._answer({"call_id": "c1", "status": "ok", "call_status": "ringing"})

        def log_message(self, format: str, *args: object) -> None:
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_the_idempotency_key_header_and_the_wait_limit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--idempotency-key is sent as the Idempotency-Key header, as given; --wait on a call
    that never ends gives up after --wait-timeout with exit 1 and the last status."""
    config = tmp_path / "sipai.toml"
    config.write_text("[api]\n")
    with _stuck_daemon() as (url, seen):
        args = ["call", "1001", "Hi.", "--url", url, "--config", str(config)]
        assert main([*args, "--idempotency-key", '"order-4711"']) == 0
        assert seen[0].get("Idempotency-Key") == '"order-4711"', seen
        assert main([*args, "--wait", "--wait-timeout", "0.3"]) == 1
    err = capsys.readouterr().err
    assert err == "sipai call: still ringing after 0.3 s\n", err


def test_the_result_receiver_takes_only_its_own_path() -> None:
    """The CLI's webhook receiver answers 200 on its unguessable path only: 404 on the bare
    /sipai-result, 400 on a Content-Length that is no number."""
    receiver = client.ResultReceiver()
    with receiver.serving() as url:
        other = client.ResultReceiver()
        with other.serving() as other_url:
            assert url.split("/")[-1] != other_url.split("/")[-1]
        host, port = url.split("/")[2].split(":")
        path = "/" + url.split("/", 3)[3]
        answers = []
        for target, length in (("/sipai-result", "2"), (path, "abc"), (path, "2")):
            connection = http.client.HTTPConnection(host, int(port), timeout=5)
            connection.putrequest("POST", target)
            connection.putheader("Content-Length", length)
            connection.endheaders(b"{}")
            answers.append(connection.getresponse().status)
            connection.close()
    assert answers == [404, 400, 200], answers
    assert receiver.bodies == [b"{}"], receiver.bodies
