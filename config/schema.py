"""The settings schema: one pydantic model per TOML section.

Every key here is documented in ``config/sipai.example.toml`` (a test keeps the two in step).
Defaults are the embedded ones: with no file at all the daemon runs in direct SIP mode on
127.0.0.1, serves the API on 127.0.0.1:8080 and answers calls with the local engine.
"""

from __future__ import annotations

import ipaddress
import re
from enum import StrEnum
from pathlib import Path
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

# pjsua2-python is built with PJSUA_MAX_CALLS = 4: one worker process never holds more.
MAX_CALLS_PER_WORKER = 4


class Section(BaseModel):
    """Common behaviour of every section: unknown keys are errors, values are validated."""

    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=True)


class Transport(StrEnum):
    UDP = "udp"
    TCP = "tcp"


class SipSettings(Section):
    registrar: str = ""
    proxy: str = ""
    username: str = Field(default="1000", min_length=1)
    password: SecretStr = SecretStr("")
    password_file: str = ""
    domain: str = ""
    bind: str = "127.0.0.1"
    port: int = Field(default=5062, ge=1, le=65535)
    workers: int = Field(default=1, ge=1, le=64)
    max_calls: int = Field(default=MAX_CALLS_PER_WORKER, ge=1, le=MAX_CALLS_PER_WORKER)
    transport: Transport = Transport.UDP
    rtp_port_min: int = Field(default=20000, ge=1024, le=65535)
    rtp_port_max: int = Field(default=20999, ge=1024, le=65535)
    register_expires: int = Field(default=300, ge=10, le=86400)
    register_keepalive: int = Field(default=10, ge=0, le=3600)  # 0: refresh only
    # INVITE sources (IPs or networks); empty: the registrar's and proxy's addresses, or
    # loopback in direct mode. Any other source gets 403.
    allow_from: list[str] = Field(default_factory=list)
    invite_rate: float = Field(default=10.0, ge=0)  # INVITEs a second per source; 0: no limit
    invite_burst: int = Field(default=20, ge=1, le=10000)
    clock_rate: int = 8000
    jitter_buffer_max_ms: int = Field(default=200, ge=40, le=1000)
    # Symmetric RTP for callers behind NAT: within a call's first packets, follow the
    # signalled peer's IP to the port it really sends from. Off: only the SDP's address.
    rtp_latching: bool = False

    @field_validator("registrar", "proxy")
    @classmethod
    def _sip_uri(cls, value: str) -> str:
        if value and not value.startswith(("sip:", "sips:")):
            raise ValueError("must be a SIP URI starting with 'sip:'")
        return value

    @field_validator("allow_from", mode="before")
    @classmethod
    def _networks(cls, value: Any) -> Any:
        if isinstance(value, str):  # from the environment: comma-separated
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list):
            for entry in value:
                try:
                    ipaddress.ip_network(str(entry).strip(), strict=False)
                except ValueError:
                    raise ValueError(f"{entry!r} is not an IP address or network") from None
        return value

    @field_validator("bind")
    @classmethod
    def _ip_address(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError("must be an IP address") from None
        return value

    @field_validator("clock_rate")
    @classmethod
    def _clock_rate(cls, value: int) -> int:
        if value not in (8000, 16000):
            raise ValueError("must be 8000 or 16000")
        return value

    @model_validator(mode="after")
    def _ports(self) -> Self:
        if self.rtp_port_min >= self.rtp_port_max:
            raise ValueError(
                f"rtp_port_min ({self.rtp_port_min}) must be below rtp_port_max "
                f"({self.rtp_port_max})"
            )
        # Each call needs an RTP and an RTCP port; every worker gets its own slice.
        needed = self.workers * self.max_calls * 2
        available = self.rtp_port_max - self.rtp_port_min + 1
        if available < needed:
            raise ValueError(
                f"RTP range {self.rtp_port_min}-{self.rtp_port_max} holds {available} ports, "
                f"{self.workers} worker(s) x {self.max_calls} calls need at least {needed}"
            )
        if self.port + self.workers - 1 > 65535:
            raise ValueError(f"port {self.port} + {self.workers} workers exceeds 65535")
        return self

    @property
    def direct_mode(self) -> bool:
        """True when no registrar is set: peers call sip:USER@HOST:PORT directly."""
        return not self.registrar


TOKEN_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
DEFAULT_TOKEN_NAME = "default"  # noqa: S105 - the name api.token goes by in the access log


class ApiSettings(Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    token: SecretStr = SecretStr("")
    token_file: str = ""
    # Named tokens valid besides api.token (which is named "default"), for key rotation.
    tokens: dict[str, SecretStr] = Field(default_factory=dict)
    token_files: dict[str, str] = Field(default_factory=dict)  # name -> file holding the token
    rate_limit_per_minute: int = Field(default=0, ge=0, le=1_000_000)  # POST /call; 0 = off
    max_body_bytes: int = Field(default=65536, ge=1024, le=16 * 1024 * 1024)
    # Connection limits (api/connections.py): seconds to send a request's headers, then its
    # body; seconds a connection may sit with no request; connections open at once.
    header_timeout: float = Field(default=10.0, gt=0, le=300)
    body_timeout: float = Field(default=15.0, gt=0, le=3600)
    idle_timeout: float = Field(default=5.0, gt=0, le=3600)
    max_connections: int = Field(default=512, ge=16, le=8192)
    # HTTP connections one client address may hold (WebSockets not counted); 0 = no share.
    max_connections_per_client: int = Field(default=64, ge=0, le=8192)
    # The web console at / (login with a token; with no token, loopback clients only).
    console: bool = True
    console_session_hours: float = Field(default=12.0, gt=0, le=24 * 30)

    @property
    def loopback_only(self) -> bool:
        """True when the API is reachable from this machine only."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    @field_validator("tokens")
    @classmethod
    def _named_tokens(cls, tokens: dict[str, SecretStr]) -> dict[str, SecretStr]:
        seen: dict[str, str] = {}
        for name, token in tokens.items():
            if not TOKEN_NAME.fullmatch(name):
                raise ValueError(f"token name {name!r}: use 1-64 letters, digits, '.', '_', '-'")
            value = token.get_secret_value()
            if not value:
                raise ValueError(f"token {name!r} is empty")
            if value in seen:
                raise ValueError(f"tokens {seen[value]!r} and {name!r} are the same token")
            seen[value] = name
        return tokens

    @model_validator(mode="after")
    def _default_token(self) -> Self:
        token = self.token.get_secret_value()
        if token and DEFAULT_TOKEN_NAME in self.tokens:
            raise ValueError(f"api.token is named {DEFAULT_TOKEN_NAME!r}: rename tokens.default")
        if token and token in {t.get_secret_value() for t in self.tokens.values()}:
            raise ValueError("api.token is also one of api.tokens")
        return self

    @property
    def named_tokens(self) -> dict[str, str]:
        """Every valid token by name (in clear); empty when the API needs none."""
        token = self.token.get_secret_value()
        named = {DEFAULT_TOKEN_NAME: token} if token else {}
        return named | {name: t.get_secret_value() for name, t in sorted(self.tokens.items())}


class Backend(StrEnum):
    LOCAL = "local"
    OPENAI = "openai"
    AZURE = "azure"
    URL = "url"


class Dialect(StrEnum):
    GA = "ga"
    BETA = "beta"


class ModelAudio(StrEnum):
    PCMU = "pcmu"  # G.711 mu-law at 8 kHz: passthrough for narrowband calls
    PCM24 = "pcm24"  # 16-bit PCM at 24 kHz, resampled here


class TurnDetectionKind(StrEnum):
    SERVER_VAD = "server_vad"
    SEMANTIC_VAD = "semantic_vad"
    NONE = "none"


class ConnectFailure(StrEnum):
    APOLOGY = "apology"
    REJECT = "reject"


class Fallback(StrEnum):
    """Where a call goes when its cloud model is lost: nowhere, or the embedded engine."""

    NONE = "none"
    LOCAL = "local"


class EndOfTurn(StrEnum):
    """How the embedded engine decides that the caller has finished speaking."""

    SMART_TURN = "smart_turn"  # the Smart Turn model after a short pause, else the silence
    SILENCE = "silence"  # the configured silence only


DEFAULT_INSTRUCTIONS = (
    "You are a friendly, concise telephone assistant. Speak in short sentences. When the "
    "caller is done, say goodbye and call the end_call tool."
)


class HttpTool(Section):
    """A tool the model may call: its arguments are POSTed as JSON to ``url``."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str = Field(min_length=1)
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    url: str
    timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    bearer_token: SecretStr = SecretStr("")

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("parameters")
    @classmethod
    def _object_schema(cls, value: dict[str, Any]) -> dict[str, Any]:
        if value.get("type") != "object":
            raise ValueError('must be a JSON schema with type = "object"')
        return value


class AgentRoute(Section):
    """Per-call session settings: the first route whose conditions all hold applies."""

    caller: str = ""  # shell-style pattern on the caller's number/user, e.g. "+44*"; "" = any
    header: str = ""  # "Name: value" the INVITE must carry (name in any case); "" = any
    instructions: str = ""  # "" = keep [agent] instructions
    greeting: str | None = None  # absent = keep; "" = wait for the caller
    voice: str = ""  # "" = keep

    @field_validator("header")
    @classmethod
    def _name_value(cls, value: str) -> str:
        if value and ":" not in value:
            raise ValueError('must be "Name: value"')
        return value


BUILTIN_TOOLS = frozenset({"end_call", "transfer_call", "send_dtmf"})


class AgentSettings(Section):
    backend: Backend = Backend.LOCAL
    url: str = ""
    model: str = ""
    api_key: SecretStr = SecretStr("")
    api_key_file: str = ""
    dialect: Dialect = Dialect.GA
    instructions: str = DEFAULT_INSTRUCTIONS
    greeting: str = "Greet the caller in one short sentence and ask how you can help."
    voice: str = Field(default="alloy", min_length=1)
    input_format: ModelAudio = ModelAudio.PCMU
    output_format: ModelAudio = ModelAudio.PCMU
    turn_detection: TurnDetectionKind = TurnDetectionKind.SERVER_VAD
    vad_threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    vad_prefix_padding_ms: int = Field(default=300, ge=0, le=2000)
    vad_silence_ms: int = Field(default=500, ge=100, le=5000)
    vad_eagerness: str = Field(default="auto", pattern="^(low|medium|high|auto)$")
    transcription_model: str = "gpt-4o-mini-transcribe"
    uplink_batch_ms: int = Field(default=40, ge=20, le=100, multiple_of=20)
    connect_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    on_connect_failure: ConnectFailure = ConnectFailure.APOLOGY
    apology: str = "Sorry, the assistant is not available right now. Please call again later."
    barge_in_min_ms: int = Field(default=200, ge=0, le=2000)
    greeting_guard_ms: int = Field(default=800, ge=0, le=10000)
    # Caller speech that is only the agent's own voice coming back (echo) never barges in.
    echo_guard: bool = True
    fallback: Fallback = Fallback.NONE
    bridge_phrase: str = Field(default="One moment, please.", min_length=1)
    transfer_target: str = ""
    transfer_extensions: list[str] = Field(default_factory=list)
    tools: list[HttpTool] = Field(default_factory=list)
    routes: list[AgentRoute] = Field(default_factory=list)

    @field_validator("tools")
    @classmethod
    def _unique_tools(cls, tools: list[HttpTool]) -> list[HttpTool]:
        names = [t.name for t in tools]
        for name in names:
            if name in BUILTIN_TOOLS:
                raise ValueError(f"tool name {name!r} is built in; choose another")
            if names.count(name) > 1:
                raise ValueError(f"tool name {name!r} is declared twice")
        return tools

    @field_validator("url")
    @classmethod
    def _ws_url(cls, value: str) -> str:
        if value and not value.startswith(("ws://", "wss://", "http://", "https://")):
            raise ValueError("must be a ws://, wss://, http:// or https:// URL")
        return value

    @field_validator("bridge_phrase")
    @classmethod
    def _words(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must say something (the caller hears it while the call fails over)")
        return value.strip()

    @model_validator(mode="after")
    def _backend_needs(self) -> Self:
        # fallback = "local" with backend = "local": nothing to fail over from, a no-op.
        if self.backend in (Backend.OPENAI, Backend.AZURE) and not self.api_key.get_secret_value():
            raise ValueError(
                f"backend {self.backend.value!r} needs api_key (or api_key_file, or the "
                "credential 'agent.api_key')"
            )
        if self.backend in (Backend.AZURE, Backend.URL) and not self.url:
            raise ValueError(f"backend {self.backend.value!r} needs url")
        if self.backend is Backend.AZURE and not self.model:
            raise ValueError("backend 'azure' needs model (the deployment name)")
        return self


# The first attempt is immediate; these are the waits after each failed one (8 attempts).
DEFAULT_RETRY_SECONDS = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)


class WebhookSettings(Section):
    secret: SecretStr = SecretStr("")
    secret_file: str = ""
    timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    retry_seconds: list[float] = Field(
        default_factory=lambda: list(DEFAULT_RETRY_SECONDS), min_length=1, max_length=20
    )
    inbound_url: str = ""

    @field_validator("retry_seconds")
    @classmethod
    def _waits(cls, value: list[float]) -> list[float]:
        if any(not 0 < wait <= 86400 for wait in value):
            raise ValueError("every wait must be more than 0 and at most 86400 seconds")
        return value

    @field_validator("inbound_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value


class StorageSettings(Section):
    path: Path = Path("./var/sipai.db")
    retention_days: float = Field(default=0, ge=0, le=36500)  # 0: keep every finished call


class RecordingsSettings(Section):
    enabled: bool = False
    directory: Path = Path("./var/recordings")
    retention_days: float = Field(default=30, ge=0, le=36500)  # 0: keep


class WebSettings(Section):
    """Browser calls over WebRTC, held by web worker processes (``python -m daemon.web``)."""

    enabled: bool = True
    workers: int = Field(default=1, ge=0, le=4)
    max_calls: int = Field(default=8, ge=1, le=32)  # browser calls one web worker holds
    connect_timeout_seconds: float = Field(default=15.0, gt=0, le=120)
    # ICE consent: checks every consent_seconds / 5; 5 unanswered in a row end the call.
    consent_seconds: float = Field(default=10.0, ge=1, le=60)
    # The addresses offered as ICE host candidates; empty: the host's addresses plus 127.0.0.1.
    ice_addresses: list[str] = Field(default_factory=list)

    @field_validator("ice_addresses")
    @classmethod
    def _addresses(cls, addresses: list[str]) -> list[str]:
        for address in addresses:
            try:
                ipaddress.ip_address(address)
            except ValueError:
                raise ValueError(f"{address!r} is not an IP address") from None
        return addresses


class SpeechBackend(StrEnum):
    LOCAL = "local"
    OPENAI = "openai"


class SpeechSettings(Section):
    backend: SpeechBackend = SpeechBackend.LOCAL
    # Paths of other models; empty = the ones packaged with sipai's dependencies.
    voice_model: str = ""
    whisper_model: str = ""
    threads: int = Field(default=2, ge=1, le=64)
    # The OpenAI REST audio backend (or any server with the same endpoints).
    url: str = "https://api.openai.com/v1"
    api_key: SecretStr = SecretStr("")
    api_key_file: str = ""
    tts_model: str = Field(default="gpt-4o-mini-tts", min_length=1)
    tts_voice: str = Field(default="alloy", min_length=1)
    stt_model: str = Field(default="gpt-4o-mini-transcribe", min_length=1)
    timeout_seconds: float = Field(default=20.0, gt=0, le=300)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _backend_needs(self) -> Self:
        if self.backend is SpeechBackend.OPENAI and not self.api_key.get_secret_value():
            raise ValueError(
                "backend 'openai' needs api_key (or api_key_file, or the credential "
                "'speech.api_key')"
            )
        return self


class AmdSettings(Section):
    """Answering-machine detection of outbound calls (``machine_detection`` in POST /call).

    Milliseconds unless said. The names follow Asterisk's ``AMD()`` parameters and the
    defaults are its documented ones except ``max_words`` (4, Asterisk 2) and
    ``after_greeting_silence_ms`` (700, Asterisk 800), tuned on synthesised pick-ups:
    Asterisk's 2 words call "Hi, this is Dana." a machine. ``beep_*``,
    ``greeting_end_silence_ms`` and ``voicemail_wait_ms`` are sipai's own."""

    initial_silence_ms: int = Field(default=2500, ge=100, le=10000)
    greeting_ms: int = Field(default=1500, ge=100, le=10000)
    after_greeting_silence_ms: int = Field(default=700, ge=100, le=5000)
    total_analysis_ms: int = Field(default=5000, ge=1000, le=30000)
    min_word_ms: int = Field(default=100, ge=20, le=1000)
    between_words_silence_ms: int = Field(default=50, ge=20, le=1000)
    max_words: int = Field(default=4, ge=1, le=20)
    silence_threshold: int = Field(default=256, ge=1, le=32767)
    max_word_ms: int = Field(default=5000, ge=100, le=30000)
    beep_min_ms: int = Field(default=200, ge=40, le=2000)
    beep_low_hz: int = Field(default=400, ge=100, le=3400)
    beep_high_hz: int = Field(default=2000, ge=100, le=3400)
    beep_purity: float = Field(default=0.8, gt=0, le=1)
    greeting_end_silence_ms: int = Field(default=1200, ge=100, le=10000)
    voicemail_wait_ms: int = Field(default=30000, ge=1000, le=120000)

    @model_validator(mode="after")
    def _band(self) -> Self:
        if self.beep_low_hz >= self.beep_high_hz:
            raise ValueError("beep_low_hz must be below beep_high_hz")
        return self


class CallsSettings(Section):
    # Outbound calls at once; 0 = every slot of every worker (sip.workers x sip.max_calls).
    max_concurrent: int = Field(default=0, ge=0, le=1000)
    # Calls waiting for a slot; beyond it POST /call answers 503. 240 = five minutes of calls
    # for a 2-core box: 48 calls at once (the planned capacity), each about a minute long.
    max_queued: int = Field(default=240, ge=1, le=100_000)


class BrainKind(StrEnum):
    RECEPTIONIST = "receptionist"
    CHAT = "chat"


class EngineSettings(Section):
    """The embedded realtime engine (``agent.backend = "local"``)."""

    brain: BrainKind = BrainKind.RECEPTIONIST
    chat_url: str = ""
    chat_model: str = ""
    chat_api_key: SecretStr = SecretStr("")
    chat_api_key_file: str = ""
    chat_timeout_seconds: float = Field(default=30.0, gt=0, le=300)
    end_of_turn: EndOfTurn = EndOfTurn.SMART_TURN
    turn_pause_ms: int = Field(default=200, ge=60, le=2000)
    turn_threshold: float = Field(default=0.5, gt=0, lt=1)

    greeting: str = Field(
        default=(
            "Hello, thank you for calling. Nobody can take your call right now. "
            "Please leave your message after this, and I will pass it on."
        ),
        min_length=1,
    )

    @field_validator("chat_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _chat_needs(self) -> Self:
        if self.brain is BrainKind.CHAT and not (self.chat_url and self.chat_model):
            raise ValueError("brain 'chat' needs chat_url and chat_model")
        return self


class RealtimeSettings(Section):
    """Realtime model sessions, whatever the backend."""

    max_reconnects: int = Field(default=2, ge=0, le=10)
    max_session_minutes: float = Field(default=55.0, gt=0, le=120)


class DaemonSettings(Section):
    drain_seconds: float = Field(default=30.0, ge=0, le=3600)
    runtime_dir: str = ""


class LogLevel(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class LogFormat(StrEnum):
    AUTO = "auto"
    JSON = "json"
    CONSOLE = "console"


class LogSettings(Section):
    level: LogLevel = LogLevel.INFO
    format: LogFormat = LogFormat.AUTO


class Settings(Section):
    sip: SipSettings = SipSettings()
    api: ApiSettings = ApiSettings()
    agent: AgentSettings = AgentSettings()
    webhooks: WebhookSettings = WebhookSettings()
    calls: CallsSettings = CallsSettings()
    amd: AmdSettings = AmdSettings()
    speech: SpeechSettings = SpeechSettings()
    realtime: RealtimeSettings = RealtimeSettings()
    engine: EngineSettings = EngineSettings()
    storage: StorageSettings = StorageSettings()
    recordings: RecordingsSettings = RecordingsSettings()
    web: WebSettings = WebSettings()
    daemon: DaemonSettings = DaemonSettings()
    log: LogSettings = LogSettings()


# Keys holding secrets: each may instead be given as KEY_file (a path) or as a systemd
# credential named "section.key" in $CREDENTIALS_DIRECTORY.
SECRET_KEYS: tuple[tuple[str, str], ...] = (
    ("sip", "password"),
    ("api", "token"),
    ("agent", "api_key"),
    ("webhooks", "secret"),
    ("speech", "api_key"),
    ("engine", "chat_api_key"),
)
