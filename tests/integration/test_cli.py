"""``sipai call`` and ``sipai calls`` as processes against the real API app served by uvicorn
on a free port, with a real SQLite store and a runner scripted step by step from the test."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from api.app import ApiContext, HealthReport, create_app
from api.spec import load_spec
from api.webhooks import Deliverer
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
