"""The client side of ``sipai call`` / ``sipai calls``: the --option grammar, the base URL and
token taken from the config, and the usage errors that exit 2 before anything is sent."""

from __future__ import annotations

from pathlib import Path

import pytest

from config import ConfigError, load_settings
from daemon import client
from daemon.cli import main


def test_option_spec_gives_value_key_and_synonyms() -> None:
    """VALUE[:KEY][=SYNONYM,...] maps to the option's value, dtmf key and synonyms."""
    assert client.parse_option("confirmed:1=yes, yeah") == {
        "value": "confirmed",
        "dtmf": "1",
        "synonyms": ["yes", "yeah"],
    }
    assert client.parse_option("cancelled=no") == {"value": "cancelled", "synonyms": ["no"]}
    assert client.parse_option("later:#") == {"value": "later", "dtmf": "#"}
    assert client.parse_option("maybe") == {"value": "maybe"}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (":1=yes", "the value before ':' or '=' is empty"),
        ("confirmed:12", "the key after ':' must be one of 0-9, * or # (got '12')"),
        ("confirmed:=yes", "the key after ':' must be one of 0-9, * or # (got '')"),
        ("confirmed=yes,,yeah", "an empty synonym after '='"),
    ],
)
def test_bad_option_specs_are_refused_naming_the_spec(spec: str, message: str) -> None:
    """A malformed --option is a usage error quoting the spec and saying what is wrong."""
    with pytest.raises(client.UsageError) as caught:
        client.parse_option(spec)
    assert str(caught.value) == f"--option {spec!r}: {message}"


def test_a_key_given_to_two_options_is_refused() -> None:
    """Two options with the same key are refused before the daemon is asked."""
    with pytest.raises(client.UsageError, match="key '1' is given to two options"):
        client.parse_options(["yes:1", "no:1"])


def test_base_url_and_token_come_from_the_config_and_the_environment(tmp_path: Path) -> None:
    """[api] host/port/token of the file, overridden by SIPAI_API__*, give the URL and token;
    a wildcard bind is reached on loopback."""
    config = tmp_path / "sipai.toml"
    config.write_text('[api]\nhost = "0.0.0.0"\nport = 9191\ntoken = "from-file"\n')
    api = load_settings(config, environ={}).settings.api
    assert (client.base_url(api), client.default_token(api)) == (
        "http://127.0.0.1:9191",
        "from-file",
    )
    env = {"SIPAI_API__HOST": "::", "SIPAI_API__PORT": "9292", "SIPAI_API__TOKEN": "from-env"}
    api = load_settings(config, environ=env).settings.api
    assert (client.base_url(api), client.default_token(api)) == ("http://[::1]:9292", "from-env")
    config.write_text('[api]\ntokens = { zeta = "z-token", crm = "c-token" }\n')
    api = load_settings(config, environ={}).settings.api
    assert client.default_token(api) == "c-token"  # no api.token: the first named, by name


def test_a_service_box_token_file_from_the_environment(tmp_path: Path) -> None:
    """On a service box the admin points SIPAI_API__TOKEN_FILE at the root-only credential
    (systemd/README.md): the example config then yields that token."""
    token = tmp_path / "api.token"
    token.write_text("service-token\n")
    example = Path(__file__).resolve().parents[2] / "config" / "sipai.example.toml"
    env = {"SIPAI_API__TOKEN_FILE": str(token)}
    api = load_settings(example, environ=env).settings.api
    assert (client.base_url(api), client.default_token(api)) == (
        "http://127.0.0.1:8080",
        "service-token",
    )


def test_loopback_urls() -> None:
    """Only a loopback daemon can reach the CLI's own result receiver on 127.0.0.1."""
    assert client.is_loopback("http://127.0.0.1:8080")
    assert client.is_loopback("http://[::1]:8080")
    assert client.is_loopback("http://localhost:8080")
    assert not client.is_loopback("http://192.0.2.10:8080")
    assert not client.is_loopback("http://sipai.example:8080")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--option", "yes"], "--option needs --choice PROMPT"),
        (["--choice", "Confirm?"], "--choice needs at least one --option SPEC"),
        (["--timeout-seconds", "10"], "--timeout-seconds and --repeat need --choice PROMPT"),
        (
            ["--choice", "Confirm?", "--option", "yes"],
            "--choice needs --callback-url URL (or --wait, which receives the result)",
        ),
        (
            ["--choice", "Confirm?", "--option", "yes", "--wait", "--url", "http://192.0.2.1:1"],
            "--choice with --wait receives the result on 127.0.0.1, which http://192.0.2.1:1 "
            "cannot reach: give --callback-url URL",
        ),
        (["--choice", "Confirm?", "--option", "yes:x"], "--option 'yes:x': the key after ':'"),
        (["--idempotency-key", "two words"], "--idempotency-key: must be 1-255 visible ASCII"),
        (["--idempotency-key", "clé"], "--idempotency-key: must be 1-255 visible ASCII"),
        (["--idempotency-key", "k" * 256], "--idempotency-key: must be 1-255 visible ASCII"),
        (["--token", "clé"], "--token/api.token: must be visible ASCII characters"),
        (["--url", "http://[bad"], "--url: must be http(s)://HOST[:PORT]"),
        (["--url", "localhost:8080"], "--url: must be http(s)://HOST[:PORT]"),
        (["--url", "ftp://x"], "--url: must be http(s)://HOST[:PORT]"),
        (["--url", "http://127.0.0.1:port"], "--url: must be http(s)://HOST[:PORT]"),
        (
            ["--choice", "Q?", "--option", "a", "--wait", "--url", "http://[bad"],
            "--url: must be http(s)://HOST[:PORT]",
        ),
    ],
)
def test_usage_errors_exit_2_with_one_line(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An incomplete or contradictory `sipai call` exits 2 with one line naming the option,
    without contacting the daemon."""
    config = tmp_path / "sipai.toml"
    config.write_text("[api]\nport = 1\n")  # nothing listens there: nothing may be sent
    code = main(["call", "1001", "Hello.", *args, "--config", str(config)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith(f"sipai call: {message}"), err
    assert err.count("\n") == 1, err


def test_a_broken_config_exits_2_as_check_config_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`sipai calls` with a misspelt key reports it like check-config and exits 2."""
    config = tmp_path / "sipai.toml"
    config.write_text("[api]\nprot = 8080\n")
    assert main(["calls", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "api.prot: unknown key (did you mean 'port'?)" in err, err


def test_a_non_ascii_token_in_the_config_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An api.token the loader accepts but no header can carry is a usage error, not a
    traceback."""
    config = tmp_path / "sipai.toml"
    config.write_text('[api]\nport = 1\ntoken = "clé-token-000000000000"\n')
    assert main(["calls", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err == "sipai calls: --token/api.token: must be visible ASCII characters\n", err


def test_client_commands_read_only_the_api_section(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a service box the other sections' secrets are the service's credentials: `calls`
    with an agent backend lacking its key and a sip.password_file it cannot read still
    reaches for the daemon (exit 1 on port 1), with the token from SIPAI_API__TOKEN_FILE."""
    token = tmp_path / "api.token"
    token.write_text("service-token\n")
    config = tmp_path / "sipai.toml"
    config.write_text(
        '[api]\nport = 1\n[agent]\nbackend = "openai"\n'
        '[sip]\npassword_file = "/nonexistent/sip.password"\n'
    )
    monkeypatch.setenv("SIPAI_API__TOKEN_FILE", str(token))
    monkeypatch.setenv("SIPAI_SIP__PORT", "not-a-port")
    assert main(["calls", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("sipai calls: cannot reach the daemon at http://127.0.0.1:1"), err
    api = client.load_api_settings(config, environ={"SIPAI_API__TOKEN_FILE": str(token)})
    assert client.default_token(api) == "service-token"
    config.write_text('[api]\nport = 0\n[agent]\nbackend = "openai"\n')
    with pytest.raises(ConfigError) as caught:
        client.load_api_settings(config, environ={"SIPAI_API__TOKEN_FILE": "/nonexistent"})
    assert caught.value.problems == [
        "environment SIPAI_API__TOKEN_FILE: api.token_file: cannot read '/nonexistent': "
        "No such file or directory",
        f"{config}: api.port: Input should be greater than or equal to 1 (got 0)",
    ]


def test_progress_line_of_a_final_call_sums_up_the_result() -> None:
    """The final line names the status and the result fields the call had."""
    view = {
        "call_id": "out-1-3",
        "call_status": "completed",
        "message_played": True,
        "choice_response": None,
        "choice_raw_text": "hmm",
        "answered_by": "human",
        "duration_seconds": 8.66,
    }
    line = client.progress_line(view, 12.04)
    assert line.startswith("out-1-3  completed  "), line
    assert line.endswith(
        '  +12.0s  message_played=yes choice=- heard="hmm" answered_by=human duration=8.7s'
    ), line
    busy = client.progress_line({"call_id": "x", "call_status": "busy", "sip_code": 486}, 1.0)
    assert busy.endswith("+1.0s  sip=486"), busy


def test_progress_line_keeps_non_ascii_readable() -> None:
    """A transcript in Spanish prints as heard="sí", not as a JSON escape."""
    view = {"call_id": "x", "call_status": "completed", "choice_raw_text": "sí"}
    assert client.progress_line(view, 1.0).endswith('choice=- heard="sí"')


def test_calls_table_of_inbound_calls_shows_the_caller() -> None:
    """Inbound rows all reach the same extension: the table shows who called instead."""
    call = {"call_id": "in-1", "direction": "inbound", "extension": "1000", "caller": "1001"}
    header, row = client.calls_table([call], "inbound").splitlines()
    assert header.split()[3] == "CALLER", header
    assert row.split()[3] == "1001", row
    header, row = client.calls_table([call]).splitlines()
    assert (header.split()[3], row.split()[3]) == ("EXTENSION", "1000"), (header, row)
