"""Kamailio as the test PBX: registrar + proxy with digest auth, on a free loopback port.

It runs the config the README documents, ``config/pbx/kamailio/kamailio.cfg``, with ``-A``
defines for the address, port, module path, db_text directory, control socket and
``min_expires``; the db_text files are the shipped ones with this instance's users.

Users live in a db_text directory written per instance: 1000 (the daemon) and 1001-1019
(test phones), password ``pw<user>``, domain 127.0.0.1. Registrations are kept in memory, so
a restart forgets them, as a PBX reboot would. INVITEs fork to every registered contact.
Every REGISTER received is logged (``register.received``, with or without credentials), so
tests can count what a PBX with fail2ban would see; credentials that fail are logged with the
source address (``auth.failed``), the line fail2ban matches.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

from tests.support.paths import free_port

CONFIG = Path(__file__).resolve().parents[2] / "config" / "pbx" / "kamailio" / "kamailio.cfg"
DBTEXT = CONFIG.parent / "dbtext"
MODULES = Path("/usr/lib/x86_64-linux-gnu/kamailio/modules")
DOMAIN = "127.0.0.1"
USERS = [str(n) for n in range(1000, 1020)]


def password(user: str) -> str:
    return f"pw{user}"


def define(value: object) -> str:
    """A string for a ``-A NAME=VALUE`` define: quoted, as the config's string settings need."""
    return '"' + str(value) + '"'


class Kamailio:
    """One Kamailio process; ``start``/``stop`` may be called again (same port, same users)."""

    def __init__(self, directory: Path, min_expires: int = 5) -> None:
        binary = shutil.which("kamailio") or "/usr/sbin/kamailio"
        assert Path(binary).exists(), "kamailio is missing: `make test` installs it"
        self.binary = binary
        self.directory = directory
        self.port = free_port(socket.SOCK_DGRAM)
        self.min_expires = min_expires  # shorter registrations get 423 Interval Too Brief
        self.uri = f"sip:{DOMAIN}:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None
        self._passwords = {user: password(user) for user in USERS}
        self._write_files()

    def _write_files(self) -> None:
        db = self.directory / "db"
        db.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(DBTEXT / "version", db / "version")
        shutil.copyfile(DBTEXT / "location", db / "location")
        header = (DBTEXT / "subscriber").read_text().splitlines()[0]
        rows = [
            f"{i}:{user}:{DOMAIN}:{self._passwords[user]}::"
            for i, user in enumerate(USERS, start=1)
        ]
        (db / "subscriber").write_text(header + "\n" + "\n".join(rows) + "\n")
        ctl = self.directory / "ctl.sock"
        self.command = [
            self.binary,
            "-f",
            str(CONFIG),
            "-A",
            f"SIPAI_ADDR={DOMAIN}",
            "-A",
            f"SIPAI_PORT={self.port}",
            "-A",
            f"SIPAI_MODULES={define(MODULES)}",
            "-A",
            f"SIPAI_DB={define(f'text://{db}')}",
            "-A",
            f"SIPAI_CTL={define(f'unix:{ctl}')}",
            "-A",
            f"SIPAI_MIN_EXPIRES={self.min_expires}",
        ]
        subprocess.run([*self.command, "-c"], check=True, capture_output=True)

    def start(self, timeout: float = 15.0) -> None:
        with (self.directory / "kamailio.log").open("ab") as log:
            self._process = subprocess.Popen(
                [*self.command, "-DD", "-E", "-n", "1"],
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                log = (self.directory / "kamailio.log").read_text()[-2000:]
                raise RuntimeError(f"kamailio exited with {self._process.returncode}: {log}")
            if self._answers_options():
                return
        raise RuntimeError(f"kamailio did not answer on port {self.port} within {timeout} s")

    def _answers_options(self) -> bool:
        branch = f"z9hG4bK{uuid.uuid4().hex[:12]}"
        request = (
            f"OPTIONS {self.uri} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:9;branch={branch};rport\r\n"
            "Max-Forwards: 5\r\n"
            f"From: <sip:probe@{DOMAIN}>;tag=probe\r\n"
            f"To: <{self.uri}>\r\n"
            f"Call-ID: {uuid.uuid4().hex}@probe\r\n"
            "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        ).encode()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            s.settimeout(0.2)
            s.sendto(request, ("127.0.0.1", self.port))
            try:
                return s.recv(4096).startswith(b"SIP/2.0 ")
            except (TimeoutError, ConnectionRefusedError):
                return False

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=10)
        self._process = None

    def restart(self, down_seconds: float = 0.0) -> None:
        """Stop, stay down ``down_seconds``, start again on the same port: the location table
        (in memory only) comes back empty, as after a PBX reboot."""
        self.stop()
        time.sleep(down_seconds)
        self.start()

    def set_password(self, user: str, secret: str) -> None:
        """Change ``user``'s password; takes effect at the next :meth:`start`."""
        self._passwords[user] = secret
        self._write_files()

    def registers(self, user: str) -> tuple[int, int]:
        """REGISTERs received from ``user`` so far, across restarts: (all, with credentials)."""
        log = (self.directory / "kamailio.log").read_text(errors="replace")
        lines = [line for line in log.splitlines() if f"register.received user={user} " in line]
        return len(lines), sum(1 for line in lines if line.endswith("digest=yes"))

    def auth_failures(self) -> list[str]:
        """The ``auth.failed user=... src=...`` lines logged so far, across restarts."""
        log = (self.directory / "kamailio.log").read_text(errors="replace")
        return [
            line[line.index("auth.failed") :] for line in log.splitlines() if "auth.failed" in line
        ]

    def contacts(self, user: str) -> list[str]:
        """Contacts registered for ``user`` now (via kamcmd over the ctl socket)."""
        return [
            line.split("Address:", 1)[1].strip()
            for line in self._lookup(user)
            if "Address:" in line
        ]

    def expires(self, user: str) -> list[int]:
        """Seconds left of each registration of ``user``."""
        return [int(line.split(":", 1)[1]) for line in self._lookup(user) if "Expires:" in line]

    def _lookup(self, user: str) -> list[str]:
        socket_path = self.directory / "ctl.sock"
        result = subprocess.run(
            ["kamcmd", "-s", f"unix:{socket_path}", "ul.lookup", "location", f"{user}@{DOMAIN}"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return result.stdout.splitlines()


@contextlib.asynccontextmanager
async def running_kamailio(directory: Path, min_expires: int = 5):  # type: ignore[no-untyped-def]
    kamailio = Kamailio(directory, min_expires)
    await asyncio.to_thread(kamailio.start)
    try:
        yield kamailio
    finally:
        await asyncio.to_thread(kamailio.stop)
