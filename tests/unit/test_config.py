"""The settings loader: example file, layers, secrets and error reports."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

import pytest
from pydantic import BaseModel

from config import ConfigError, Settings, load_settings
from config.schema import Backend
from tests.support import ROOT, SIPAI

EXAMPLE = ROOT / "config" / "sipai.example.toml"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sipai.toml"
    path.write_text(text)
    return path


def test_example_documents_every_key_and_loads() -> None:
    """The example file sets every schema key, each preceded by a comment, and validates."""
    data = tomllib.loads(EXAMPLE.read_text())
    schema_keys = {
        (section, key)
        for section, field in Settings.model_fields.items()
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
        for key in field.annotation.model_fields
    }
    example_keys = {(section, key) for section, table in data.items() for key in table}
    assert example_keys == schema_keys

    # Each key, or the run of keys it belongs to, sits right under a comment.
    lines = EXAMPLE.read_text().splitlines()
    for number, line in enumerate(lines):
        if "=" not in line or line.startswith("#"):
            continue
        above = number - 1
        while "=" in lines[above] and not lines[above].startswith("#"):
            above -= 1
        assert lines[above].startswith("#"), f"{line!r} has no comment above it"

    loaded = load_settings(EXAMPLE, environ={})
    assert loaded.settings == Settings()  # the example shows the defaults


def test_no_file_gives_embedded_defaults() -> None:
    """Without a file or overrides the daemon runs direct SIP on loopback with the local engine."""
    loaded = load_settings(None, environ={})
    assert loaded.embedded_defaults
    settings = loaded.settings
    assert settings.sip.direct_mode
    assert (settings.sip.bind, settings.api.host, settings.api.port) == (
        "127.0.0.1",
        "127.0.0.1",
        8080,
    )
    assert settings.agent.backend is Backend.LOCAL


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    """SIPAI_SECTION__KEY wins over the file and is converted to the key's type."""
    path = _write(tmp_path, '[sip]\nport = 5070\nregistrar = "sip:pbx.test:5060"\n')
    loaded = load_settings(path, environ={"SIPAI_SIP__PORT": "5080", "SIPAI_API__HOST": "::1"})
    assert loaded.settings.sip.port == 5080
    assert loaded.settings.sip.registrar == "sip:pbx.test:5060"
    assert loaded.settings.api.host == "::1"
    assert loaded.sources[("sip", "port")] == "environment SIPAI_SIP__PORT"


def test_list_keys_are_given_in_the_environment_as_json_or_commas() -> None:
    """A list key takes a JSON array or comma-separated items from the environment; a
    broken array is blamed on its variable."""
    loaded = load_settings(
        None,
        environ={
            "SIPAI_WEB__ICE_ADDRESSES": '["127.0.0.1", "::1"]',
            "SIPAI_SIP__ALLOW_FROM": "127.0.0.1, 10.0.0.0/8",
        },
    )
    assert loaded.settings.web.ice_addresses == ["127.0.0.1", "::1"]
    assert loaded.settings.sip.allow_from == ["127.0.0.1", "10.0.0.0/8"]
    with pytest.raises(ConfigError) as caught:
        load_settings(None, environ={"SIPAI_WEB__ICE_ADDRESSES": '["127.0.0.1"'})
    assert caught.value.problems[0].startswith(
        "environment SIPAI_WEB__ICE_ADDRESSES: not a JSON array"
    ), caught.value.problems


def test_three_errors_are_all_reported(tmp_path: Path) -> None:
    """Each problem gets its own line naming the file, the dotted key and the reason."""
    path = _write(
        tmp_path,
        '[sip]\nport = "five"\nregistar = "sip:pbx"\n[api]\nport = 70000\n',
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    problems = caught.value.problems
    assert len(problems) == 3, problems
    assert problems[0].startswith(f"{path}: sip.port: ")
    assert problems[0].endswith("(got 'five')")
    assert problems[1] == f"{path}: sip.registar: unknown key (did you mean 'registrar'?)"
    assert problems[2] == (
        f"{path}: api.port: Input should be less than or equal to 65535 (got 70000)"
    )


def test_error_from_environment_names_the_variable(tmp_path: Path) -> None:
    """A bad override is blamed on its variable, a malformed variable name is reported."""
    with pytest.raises(ConfigError) as caught:
        load_settings(None, environ={"SIPAI_SIP__WORKERS": "many", "SIPAI_SIP__A__B": "1"})
    assert (
        caught.value.problems[0]
        == "environment SIPAI_SIP__A__B: expected the form SIPAI_SECTION__KEY"
    )
    assert caught.value.problems[1].startswith("environment SIPAI_SIP__WORKERS: sip.workers: ")


def test_cross_field_rules(tmp_path: Path) -> None:
    """Rules spanning keys (RTP range, backend needs) are reported on their section."""
    path = _write(
        tmp_path,
        '[sip]\nrtp_port_min = 30000\nrtp_port_max = 20000\n[agent]\nbackend = "openai"\n'
        '[speech]\nbackend = "openai"\nurl = "api.openai.com"\n',
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    text = str(caught.value)
    assert f"{path}: sip: rtp_port_min (30000) must be below rtp_port_max (20000)" in text
    assert f"{path}: agent: backend 'openai' needs api_key" in text
    assert f"{path}: speech.url: must be an http:// or https:// URL" in text


def test_toml_syntax_error_names_line(tmp_path: Path) -> None:
    """A TOML syntax error names the file and position."""
    path = _write(tmp_path, "[sip]\nport = \n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    assert caught.value.problems[0].startswith(f"{path}: TOML syntax error: ")
    assert "line 2" in caught.value.problems[0]


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    """A config path that does not exist is one clear problem, not a traceback."""
    with pytest.raises(ConfigError) as caught:
        load_settings(tmp_path / "nope.toml", environ={})
    assert caught.value.problems == [
        f"{tmp_path / 'nope.toml'}: cannot read the config file: No such file or directory"
    ]


def test_secret_from_credentials_directory(tmp_path: Path) -> None:
    """A systemd credential named section.key fills an unset secret."""
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "sip.password").write_text("from-credential\n")
    (creds / "webhooks.secret").write_text("whsec")
    (creds / "speech.api_key").write_text("sk-speech\n")
    loaded = load_settings(None, environ={"CREDENTIALS_DIRECTORY": str(creds)})
    assert loaded.settings.speech.api_key.get_secret_value() == "sk-speech"
    assert loaded.settings.sip.password.get_secret_value() == "from-credential"
    assert loaded.settings.webhooks.secret.get_secret_value() == "whsec"
    assert loaded.settings.api.token.get_secret_value() == ""


def test_secret_file_relative_to_config_and_explicit_value_wins(tmp_path: Path) -> None:
    """KEY_file is read relative to the config file and beats a credential."""
    (tmp_path / "pw.txt").write_text("from-file\n")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "sip.password").write_text("from-credential")
    path = _write(tmp_path, '[sip]\npassword_file = "pw.txt"\n')
    loaded = load_settings(path, environ={"CREDENTIALS_DIRECTORY": str(creds)})
    assert loaded.settings.sip.password.get_secret_value() == "from-file"


def test_named_tokens_from_the_file_token_files_and_credentials(tmp_path: Path) -> None:
    """api.token is "default"; api.tokens, api.token_files (relative to the file) and the
    credentials api.tokens.NAME add named tokens, the file's name winning over a credential."""
    (tmp_path / "billing.token").write_text("tok-billing\n")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "api.tokens.ops").write_text("tok-ops\n")
    (creds / "api.tokens.crm").write_text("tok-stale")
    (creds / "api.tokens.unset").write_text("")
    path = _write(
        tmp_path,
        '[api]\ntoken = "tok-default"\ntokens = { crm = "tok-crm" }\n'
        'token_files = { billing = "billing.token" }\n',
    )
    loaded = load_settings(path, environ={"CREDENTIALS_DIRECTORY": str(creds)})
    assert loaded.settings.api.named_tokens == {
        "default": "tok-default",
        "billing": "tok-billing",
        "crm": "tok-crm",
        "ops": "tok-ops",
    }
    assert load_settings(None, environ={}).settings.api.named_tokens == {}


@pytest.mark.parametrize(
    ("api", "reason"),
    [
        ('tokens = { crm = "" }', "token 'crm' is empty"),
        ('tokens = { "a b" = "x" }', "token name 'a b'"),
        ('tokens = { crm = "same", ops = "same" }', "tokens 'crm' and 'ops' are the same token"),
        ('token = "t"\ntokens = { default = "u" }', "api.token is named 'default'"),
        ('token = "t"\ntokens = { crm = "t" }', "api.token is also one of api.tokens"),
        (
            'tokens = { crm = "x" }\ntoken_files = { crm = "f" }',
            "api.tokens.crm: set in tokens or token_files, not both",
        ),
        ('token_files = { crm = "/nonexistent/t" }', "api.token_files.crm: cannot read"),
    ],
)
def test_named_token_problems(tmp_path: Path, api: str, reason: str) -> None:
    """Empty, badly named, duplicated or unreadable named tokens are errors, never echoed."""
    path = _write(tmp_path, f"[api]\n{api}\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    assert reason in str(caught.value)
    assert 'same"' not in str(caught.value)
    assert "'x'" not in str(caught.value)


def test_secret_in_environment_replaces_file_form(tmp_path: Path) -> None:
    """SIPAI_SIP__PASSWORD replaces a password_file set in the file."""
    path = _write(tmp_path, '[sip]\npassword_file = "/nonexistent/pw"\n')
    loaded = load_settings(path, environ={"SIPAI_SIP__PASSWORD": "from-env"})
    assert loaded.settings.sip.password.get_secret_value() == "from-env"


def test_secret_problems(tmp_path: Path) -> None:
    """Both forms at once, or an unreadable secret file, are errors; secrets are never echoed."""
    path = _write(
        tmp_path,
        '[sip]\npassword = "hunter2"\npassword_file = "pw"\n[api]\ntoken_file = "/nonexistent/t"\n',
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    assert caught.value.problems == [
        f"{path}: sip.password: set either password or password_file, not both",
        f"{path}: api.token_file: cannot read '/nonexistent/t': No such file or directory",
    ]
    assert "hunter2" not in str(caught.value)


def test_check_config_command_reports_and_exits_2(tmp_path: Path) -> None:
    """`sipai check-config` prints every problem without a traceback and exits 2."""
    path = _write(tmp_path, '[sip]\nworkers = 0\n[log]\nlevel = "loud"\n')
    result = subprocess.run(
        [SIPAI, "check-config", "--config", path], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"{path}: sip.workers: " in result.stderr
    assert f"{path}: log.level: " in result.stderr

    good = subprocess.run(
        [SIPAI, "check-config", "--config", EXAMPLE], capture_output=True, text=True, check=False
    )
    assert (good.returncode, good.stdout.strip()) == (0, f"{EXAMPLE}: OK")


def test_rest_speech_needs_a_key(tmp_path: Path) -> None:
    """speech.backend = "openai" without a key names the key and where else it may come from."""
    path = _write(tmp_path, '[speech]\nbackend = "openai"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    assert caught.value.problems == [
        f"{path}: speech: backend 'openai' needs api_key (or api_key_file, or the "
        "credential 'speech.api_key')"
    ]


def test_webhook_retry_waits_are_set_and_checked(tmp_path: Path) -> None:
    """[webhooks] retry_seconds: the documented schedule by default, a list from the file or
    the environment, and a wait of 0 or over a day refused naming the key."""
    assert Settings().webhooks.retry_seconds == [5, 300, 1800, 7200, 18000, 36000, 36000]
    path = _write(tmp_path, "[webhooks]\nretry_seconds = [1, 2]\n")
    assert load_settings(path, environ={}).settings.webhooks.retry_seconds == [1, 2]
    env = {"SIPAI_WEBHOOKS__RETRY_SECONDS": "[5, 5, 5]"}
    assert load_settings(None, environ=env).settings.webhooks.retry_seconds == [5, 5, 5]
    with pytest.raises(ConfigError) as caught:
        load_settings(_write(tmp_path, "[webhooks]\nretry_seconds = [5, 0]\n"), environ={})
    assert caught.value.problems[0].startswith(f"{path}: webhooks.retry_seconds: "), caught.value


def test_amd_settings_default_to_asterisk_and_are_checked(tmp_path: Path) -> None:
    """[amd] holds Asterisk AMD()'s documented defaults (but 4 words, 700 ms after a greeting),
    takes the file and the environment, and refuses an out-of-range value or an empty beep
    band naming the key and the file."""
    amd = Settings().amd
    assert (amd.initial_silence_ms, amd.greeting_ms, amd.after_greeting_silence_ms) == (
        2500,
        1500,
        700,
    )
    assert (amd.total_analysis_ms, amd.min_word_ms, amd.between_words_silence_ms) == (
        5000,
        100,
        50,
    )
    assert (amd.max_words, amd.silence_threshold, amd.max_word_ms) == (4, 256, 5000)
    path = _write(tmp_path, "[amd]\nmax_words = 2\n")
    assert load_settings(path, environ={}).settings.amd.max_words == 2
    env = {"SIPAI_AMD__GREETING_MS": "2000"}
    assert load_settings(None, environ=env).settings.amd.greeting_ms == 2000
    with pytest.raises(ConfigError) as caught:
        load_settings(_write(tmp_path, "[amd]\nmax_words = 0\n"), environ={})
    assert caught.value.problems[0].startswith(f"{path}: amd.max_words: "), caught.value
    with pytest.raises(ConfigError) as caught:
        load_settings(_write(tmp_path, "[amd]\nbeep_low_hz = 2500\n"), environ={})
    assert caught.value.problems[0].startswith(f"{path}: amd"), caught.value
    assert "beep_low_hz must be below beep_high_hz" in caught.value.problems[0]


def test_fallback_and_bridge_phrase(tmp_path: Path) -> None:
    """fallback = "local" loads with any backend (with "local" it changes nothing); a blank
    bridge_phrase is an error that names the key."""
    path = _write(tmp_path, '[agent]\nfallback = "local"\nbridge_phrase = " Hold on. "\n')
    agent = load_settings(path, environ={}).settings.agent
    assert (agent.backend, agent.fallback.value, agent.bridge_phrase) == (
        Backend.LOCAL,
        "local",
        "Hold on.",
    )
    path = _write(tmp_path, '[agent]\nfallback = "cloud"\nbridge_phrase = "  "\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    text = str(caught.value)
    assert f"{path}: agent.fallback:" in text, text
    assert f"{path}: agent.bridge_phrase: must say something" in text, text
