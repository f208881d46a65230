"""The PBX snippets shipped in config/pbx: Kamailio's config passes ``kamailio -c`` (the suite
runs it as its PBX too); Asterisk's and FreeSWITCH's, for which this machine has no binaries,
are checked against the sections, keys and values their documentation gives, and against the
README's ``[sip]`` example."""

from __future__ import annotations

import hashlib
import re
import shutil
import socket
import subprocess
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PBX = REPO / "config" / "pbx"

# Asterisk's res_pjsip configuration reference (the "Configuration Option Reference" of
# res_pjsip, also listed in pjsip.conf.sample): the options this table admits per object
# type. Every one named here is documented there; the table is a subset of the reference.
PJSIP_KEYS = {
    "transport": {
        "type",
        "protocol",
        "bind",
        "local_net",
        "external_media_address",
        "external_signaling_address",
        "external_signaling_port",
        "tos",
        "cos",
        "allow_reload",
        "symmetric_transport",
    },
    "endpoint": {
        "type",
        "context",
        "disallow",
        "allow",
        "auth",
        "outbound_auth",
        "aors",
        "direct_media",
        "dtmf_mode",
        "rtp_symmetric",
        "force_rport",
        "rewrite_contact",
        "callerid",
        "transport",
        "from_user",
        "from_domain",
        "identify_by",
        "language",
        "rtp_timeout",
        "allow_transfer",
        "ice_support",
        "media_encryption",
        "trust_id_inbound",
        "send_pai",
        "send_rpid",
        "timers",
        "100rel",
        "moh_suggest",
        "mailboxes",
    },
    "aor": {
        "type",
        "max_contacts",
        "remove_existing",
        "qualify_frequency",
        "qualify_timeout",
        "default_expiration",
        "minimum_expiration",
        "maximum_expiration",
        "contact",
        "authenticate_qualify",
        "mailboxes",
        "support_path",
    },
    "auth": {"type", "auth_type", "username", "password", "realm", "md5_cred", "nonce_lifetime"},
}
PJSIP_ENUMS = {
    "protocol": {"udp", "tcp", "tls", "ws", "wss", "flow"},
    "dtmf_mode": {"rfc4733", "inband", "info", "auto", "auto_info"},
    "auth_type": {"userpass", "md5"},
    "direct_media": {"yes", "no"},
    "rtp_symmetric": {"yes", "no"},
    "force_rport": {"yes", "no"},
    "rewrite_contact": {"yes", "no"},
    "remove_existing": {"yes", "no"},
}
CODECS = {"ulaw", "alaw", "g722"}  # what sipai negotiates (README "SIP": Codecs)
DIALPLAN_APPS = {"Dial", "Hangup"}

# FreeSWITCH's vanilla conf/directory/default/1000.xml: its params and variables.
FREESWITCH_PARAMS = {"password", "vm-password"}
FREESWITCH_VARIABLES = {
    "toll_allow", "accountcode", "user_context", "effective_caller_id_name",
    "effective_caller_id_number", "outbound_caller_id_name", "outbound_caller_id_number",
    "callgroup",
}  # fmt: skip

Section = tuple[str, list[tuple[str, str]]]


def read_ini(text: str) -> list[Section]:
    """Asterisk's config syntax as far as the snippets use it: ``[section]``, ``key = value``
    and ``key => value`` lines, ``;`` comments. Any other line is an error."""
    sections: list[Section] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split(";", 1)[0].strip()
        if not line:
            continue
        header = re.fullmatch(r"\[([^\]\s]+)\]", line)
        if header:
            sections.append((header.group(1), []))
            continue
        pair = re.fullmatch(r"([A-Za-z0-9_]+)\s*(=>|=)\s*(.*)", line)
        if pair is None or not sections:
            raise ValueError(f"line {number}: not a section or key = value: {raw!r}")
        sections[-1][1].append((pair.group(1), pair.group(3).strip()))
    return sections


def check_pjsip(text: str, contexts: set[str]) -> list[str]:
    """Problems of a pjsip.conf: unknown types, undocumented keys, values out of their enums,
    and ``aors`` / ``auth`` / ``context`` that name nothing."""
    problems: list[str] = []
    sections = read_ini(text)
    named: dict[str, set[str]] = {}
    for name, pairs in sections:
        kind = dict(pairs).get("type", "")
        named.setdefault(kind, set()).add(name)
    for name, pairs in sections:
        values = dict(pairs)
        kind = values.get("type", "")
        if kind not in PJSIP_KEYS:
            problems.append(f"[{name}]: type {kind!r} is not one of {sorted(PJSIP_KEYS)}")
            continue
        for key, value in pairs:
            if key not in PJSIP_KEYS[kind]:
                problems.append(f"[{name}] {key}: not a documented {kind} option")
            elif key in PJSIP_ENUMS and value not in PJSIP_ENUMS[key]:
                problems.append(f"[{name}] {key} = {value}: not one of {sorted(PJSIP_ENUMS[key])}")
            elif key == "allow" and not set(value.split(",")) <= CODECS:
                problems.append(f"[{name}] allow = {value}: sipai negotiates {sorted(CODECS)}")
            elif key in ("max_contacts", "qualify_frequency") and not value.isdigit():
                problems.append(f"[{name}] {key} = {value}: not a number")
        for key, kind_named in (("aors", "aor"), ("auth", "auth")):
            for ref in filter(None, values.get(key, "").split(",")):
                if ref.strip() not in named.get(kind_named, set()):
                    problems.append(f"[{name}] {key} = {ref}: no [{ref}] of type {kind_named}")
        if "context" in values and values["context"] not in contexts:
            problems.append(f"[{name}] context = {values['context']}: not in extensions.conf")
    return problems


def check_extensions(text: str) -> list[str]:
    """Problems of an extensions.conf: ``exten``/``same`` lines with a priority and an
    application of the snippet's set."""
    problems: list[str] = []
    for name, pairs in read_ini(text):
        for key, value in pairs:
            if key == "exten":
                match = re.fullmatch(r"(_?[0-9A-Za-z+*#.!\[\]-]+),([0-9]+|n),(\w+)\((.*)\)", value)
            elif key == "same":
                match = re.fullmatch(r"()(n|[0-9]+),(\w+)\((.*)\)", value)
            else:
                problems.append(f"[{name}] {key}: only exten and same lines are expected")
                continue
            if match is None:
                problems.append(f"[{name}] {key} => {value}: not pattern,priority,App(args)")
            elif match.group(3) not in DIALPLAN_APPS:
                problems.append(f"[{name}] {match.group(3)}: not one of {sorted(DIALPLAN_APPS)}")
    return problems


def _readme_sip() -> dict[str, str]:
    """The ``[sip]`` of the README's PBX example (the block with a registrar)."""
    readme = (REPO / "README.md").read_text()
    for block in re.findall(r"```toml\n(.*?)```", readme, re.DOTALL):
        sip = tomllib.loads(block).get("sip", {})
        if sip.get("registrar"):
            return {k: str(v) for k, v in sip.items()}
    raise AssertionError("README has no [sip] example with a registrar")


def _contexts() -> set[str]:
    return {name for name, _ in read_ini((PBX / "asterisk" / "extensions.conf").read_text())}


def test_shipped_asterisk_files_pass_the_checks() -> None:
    """pjsip.conf and extensions.conf use documented keys and values, and refer to each other
    consistently."""
    pjsip = (PBX / "asterisk" / "pjsip.conf").read_text()
    assert check_pjsip(pjsip, _contexts()) == []
    assert check_extensions((PBX / "asterisk" / "extensions.conf").read_text()) == []


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        ("max_contacts = 4", "max_contact = 4", "[1000] max_contact: not a documented aor option"),
        ("aors = 1000", "aors = 1001", "[1000] aors = 1001: no [1001] of type aor"),
        ("auth = 1000-auth", "auth = 1000-auht", "[1000] auth = 1000-auht: no [1000-auht]"),
        ("dtmf_mode = rfc4733", "dtmf_mode = rfc2833", "[1000] dtmf_mode = rfc2833: not one"),
        ("context = from-sipai", "context = sipai", "[1000] context = sipai: not in extensions"),
        ("allow = ulaw,alaw", "allow = ulaw,opus", "[1000] allow = ulaw,opus: sipai negotiates"),
        ("type = auth", "type = authentication", "[1000-auth]: type 'authentication' is not"),
    ],
)
def test_the_checker_rejects_a_broken_pjsip_conf(old: str, new: str, problem: str) -> None:
    """A misspelt key, a dangling reference or a value out of its enum is reported."""
    pjsip = (PBX / "asterisk" / "pjsip.conf").read_text()
    assert old in pjsip
    problems = check_pjsip(pjsip.replace(old, new, 1), _contexts())
    assert any(p.startswith(problem) for p in problems), problems


def test_the_checker_rejects_a_broken_dialplan() -> None:
    """A line without a priority, or another application, is reported."""
    extensions = (PBX / "asterisk" / "extensions.conf").read_text()
    broken = extensions.replace(" same => n,Hangup()", " same => Hangup()", 1)
    assert check_extensions(broken) == [
        "[internal] same => Hangup(): not pattern,priority,App(args)"
    ]
    other = extensions.replace("Hangup()", "Playback(hello)", 1)
    assert check_extensions(other) == ["[internal] Playback: not one of ['Dial', 'Hangup']"]
    with pytest.raises(ValueError, match="line 1: not a section"):
        read_ini("exten 1000,1,Dial(x)\n")


def test_asterisk_and_freeswitch_users_are_the_readme_extension() -> None:
    """The snippets register the README example's user with its password."""
    sip = _readme_sip()
    auth = dict(dict(read_ini((PBX / "asterisk" / "pjsip.conf").read_text()))["1000-auth"])
    assert (auth["username"], auth["password"]) == (sip["username"], sip["password"])
    root = ET.parse(PBX / "freeswitch" / "1000.xml").getroot()
    user = root.find("user")
    assert root.tag == "include"
    assert user is not None
    assert user.get("id") == sip["username"]
    params = {p.get("name"): p.get("value") for p in user.iterfind("params/param")}
    variables = {v.get("name"): v.get("value") for v in user.iterfind("variables/variable")}
    assert set(params) <= FREESWITCH_PARAMS, params
    assert set(variables) <= FREESWITCH_VARIABLES, variables
    assert params["password"] == sip["password"]
    assert variables["user_context"] == "default"
    subscriber = (PBX / "kamailio" / "dbtext" / "subscriber").read_text().splitlines()
    assert any(row.split(":")[1:4:2] == [sip["username"], sip["password"]] for row in subscriber)


def test_snippets_say_what_a_stock_pbx_needs_changed() -> None:
    """FreeSWITCH's vanilla profile ships multiple registrations commented out, so the snippet
    says to uncomment them; the Asterisk transport has its own name, not the stock one."""
    comment = (PBX / "freeswitch" / "1000.xml").read_text().split("-->")[0]
    assert 'uncomment <param name="multiple-registrations" value="contact"/>' in comment
    assert "sofia profile internal restart" in comment
    sections = read_ini((PBX / "asterisk" / "pjsip.conf").read_text())
    transports = [name for name, keys in sections if ("type", "transport") in keys]
    assert transports == ["transport-sipai-udp"], transports


def _kamailio(*defines: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("kamailio") or "/usr/sbin/kamailio"
    command = [binary, "-c", "-f", str(PBX / "kamailio" / "kamailio.cfg")]
    for define in defines:
        command += ["-A", define]
    return subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)


def test_kamailio_config_passes_its_check_with_and_without_defines(tmp_path: Path) -> None:
    """`kamailio -c` accepts the shipped config on its defaults (port 5060) and with the -A
    defines the tests run it with."""
    plain = _kamailio()
    assert plain.returncode == 0, plain.stderr[-2000:]
    assert "127.0.0.1 [127.0.0.1]:5060" in plain.stdout + plain.stderr
    defined = _kamailio(
        "SIPAI_ADDR=127.0.0.1",
        "SIPAI_PORT=5777",
        f'SIPAI_DB="text://{tmp_path}"',
        f'SIPAI_CTL="unix:{tmp_path / "ctl.sock"}"',
        "SIPAI_MIN_EXPIRES=5",
    )
    assert defined.returncode == 0, defined.stderr[-2000:]
    assert "127.0.0.1 [127.0.0.1]:5777" in defined.stdout + defined.stderr


def test_the_suites_pbx_runs_the_shipped_kamailio_config(tmp_path: Path) -> None:
    """Every SIP test's Kamailio runs config/pbx/kamailio/kamailio.cfg itself (defines only),
    with the shipped db_text headers."""
    from tests.peers.kamailio import Kamailio  # noqa: PLC0415 - the peer, not the code tested

    kamailio = Kamailio(tmp_path)
    assert kamailio.command[1:3] == ["-f", str(PBX / "kamailio" / "kamailio.cfg")]
    assert all(arg.startswith("SIPAI_") for arg in kamailio.command[4::2]), kamailio.command
    for name in ("version", "location"):
        shipped = (PBX / "kamailio" / "dbtext" / name).read_text()
        assert (tmp_path / "db" / name).read_text() == shipped
    header = (PBX / "kamailio" / "dbtext" / "subscriber").read_text().splitlines()[0]
    assert (tmp_path / "db" / "subscriber").read_text().splitlines()[0] == header


def _register(port: int, user: str, secret: str) -> int:
    """A REGISTER for ``user`` answered with a digest of ``secret``: the final status."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(5)
        me = f"127.0.0.1:{s.getsockname()[1]}"
        uri = f"sip:127.0.0.1:{port}"

        def send(cseq: int, extra: str = "") -> str:
            s.sendto(
                (
                    f"REGISTER {uri} SIP/2.0\r\n"
                    f"Via: SIP/2.0/UDP {me};branch=z9hG4bK{cseq}x{user}\r\n"
                    f"Max-Forwards: 70\r\nFrom: <sip:{user}@127.0.0.1>;tag=t{user}\r\n"
                    f"To: <sip:{user}@127.0.0.1>\r\nCall-ID: reg-{user}-{port}\r\n"
                    f"CSeq: {cseq} REGISTER\r\nContact: <sip:{user}@{me}>\r\n"
                    f"Expires: 60\r\n{extra}Content-Length: 0\r\n\r\n"
                ).encode(),
                ("127.0.0.1", port),
            )
            return s.recv(65535).decode()

        challenge = send(1)
        assert challenge.startswith("SIP/2.0 401"), challenge
        nonce = re.search(r'nonce="([^"]+)"', challenge)
        assert nonce is not None, challenge
        ha1 = hashlib.md5(f"{user}:127.0.0.1:{secret}".encode()).hexdigest()
        ha2 = hashlib.md5(f"REGISTER:{uri}".encode()).hexdigest()
        digest = hashlib.md5(f"{ha1}:{nonce[1]}:{ha2}".encode()).hexdigest()
        answer = send(
            2,
            f'Authorization: Digest username="{user}", realm="127.0.0.1", '
            f'nonce="{nonce[1]}", uri="{uri}", response="{digest}", algorithm=MD5\r\n',
        )
        return int(answer.split()[1])


def test_kamailio_logs_failed_credentials_with_the_source_address(tmp_path: Path) -> None:
    """A wrong password is logged as auth.failed with user and source address (what fail2ban
    matches); a first challenge and a good password log no failure."""
    from tests.peers.kamailio import Kamailio, password  # noqa: PLC0415 - the peer

    kamailio = Kamailio(tmp_path)
    kamailio.start()
    try:
        assert _register(kamailio.port, "1001", password("1001")) == 200
        assert kamailio.auth_failures() == []
        assert _register(kamailio.port, "1002", "wrong") in (401, 403)
    finally:
        kamailio.stop()
    assert kamailio.auth_failures() == ["auth.failed user=1002 src=127.0.0.1 rc=-2"]
