"""Load settings from a TOML file, the environment and credential files.

Layers, later ones win:

1. the schema's defaults (the embedded configuration);
2. the TOML file, if one is given;
3. environment overrides ``SIPAI_SECTION__KEY=value`` (e.g. ``SIPAI_SIP__PORT=5070``).

Secrets (``sip.password``, ``api.token``, ``agent.api_key``, ``webhooks.secret``) may instead
be read from a file named by ``KEY_file`` or, when neither is set, from the systemd
credential ``section.key`` in ``$CREDENTIALS_DIRECTORY``; named API tokens likewise from
``api.token_files`` or the credentials ``api.tokens.NAME``. A secret set in the environment
replaces the file's secret whichever form the file used.

Every problem is reported, not only the first: :class:`ConfigError` carries one line per
problem, each naming where the value came from (file or environment variable), the dotted
key and the reason.
"""

from __future__ import annotations

import difflib
import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_origin

from pydantic import BaseModel, ValidationError

from config.schema import SECRET_KEYS, Settings

ENV_PREFIX = "SIPAI_"
CONFIG_ENV = "SIPAI_CONFIG"
CREDENTIALS_ENV = "CREDENTIALS_DIRECTORY"

Key = tuple[str, ...]


class ConfigError(Exception):
    """The configuration cannot be used; ``problems`` holds one readable line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class LoadedSettings:
    """Validated settings and where each explicitly set value came from."""

    settings: Settings
    path: Path | None
    sources: Mapping[Key, str] = field(default_factory=dict)

    @property
    def embedded_defaults(self) -> bool:
        """True when neither a file nor the environment set anything."""
        return self.path is None and not self.sources


def load_settings(
    path: Path | str | None = None, environ: Mapping[str, str] | None = None
) -> LoadedSettings:
    """Load and validate settings; raise :class:`ConfigError` listing every problem."""
    env = os.environ if environ is None else environ
    config_path = Path(path) if path is not None else None
    raw: dict[str, Any] = {}
    sources: dict[Key, str] = {}
    problems: list[str] = []

    if config_path is not None:
        raw = _read_toml(config_path)
        for section, values in raw.items():
            if isinstance(values, dict):
                for key in values:
                    sources[(section, key)] = str(config_path)
            else:
                sources[(section,)] = str(config_path)

    _apply_env(raw, sources, env, problems)
    _resolve_secrets(raw, sources, config_path, env, problems)
    _resolve_named_tokens(raw, sources, config_path, env, problems)

    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        problems.extend(_describe(exc, sources, config_path))
        settings = None
    if problems or settings is None:
        raise ConfigError(problems)
    return LoadedSettings(settings=settings, path=config_path, sources=sources)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read the config file: {exc.strerror}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: the config file is not UTF-8 text ({exc.reason})"]) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: TOML syntax error: {exc}"]) from None


def _apply_env(
    raw: dict[str, Any], sources: dict[Key, str], env: Mapping[str, str], problems: list[str]
) -> None:
    secret_keys = {f"{section}.{key}" for section, key in SECRET_KEYS}
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        parts = name[len(ENV_PREFIX) :].lower().split("__")
        if len(parts) != 2 or not all(parts):
            problems.append(f"environment {name}: expected the form SIPAI_SECTION__KEY")
            continue
        section, key = parts
        table = raw.setdefault(section, {})
        if not isinstance(table, dict):
            problems.append(f"environment {name}: [{section}] in the file is not a table")
            continue
        # A secret given in the environment replaces the file's, in whichever form it was.
        base = key.removesuffix("_file")
        if f"{section}.{base}" in secret_keys:
            for variant in (base, f"{base}_file"):
                from_file = not sources.get((section, variant), "").startswith("environment ")
                if variant != key and variant in table and from_file:
                    table.pop(variant, None)
                    sources.pop((section, variant), None)
        value: Any = env[name]
        if _is_list(section, key):
            try:
                value = _env_list(value)
            except ValueError as exc:
                problems.append(f"environment {name}: {exc}")
                continue
        table[key] = value
        sources[(section, key)] = f"environment {name}"


def _is_list(section: str, key: str) -> bool:
    """Whether ``[section] key`` holds a list (given in the environment as JSON or commas)."""
    model = Settings.model_fields.get(section)
    cls = model.annotation if model is not None else None
    if not (isinstance(cls, type) and issubclass(cls, BaseModel)):
        return False
    found = cls.model_fields.get(key)
    return found is not None and get_origin(found.annotation) is list


def _env_list(text: str) -> list[Any]:
    """A list from the environment: a JSON array (``["127.0.0.1", "::1"]``), or items
    separated by commas (``127.0.0.1, ::1``; empty: no items)."""
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not a JSON array: {exc.msg} at character {exc.pos}") from None
        if not isinstance(items, list):
            raise ValueError("not a JSON array")
        return items
    return [item.strip() for item in text.split(",") if item.strip()]


def _resolve_secrets(
    raw: dict[str, Any],
    sources: dict[Key, str],
    config_path: Path | None,
    env: Mapping[str, str],
    problems: list[str],
) -> None:
    credentials = env.get(CREDENTIALS_ENV, "")
    for section, key in SECRET_KEYS:
        table = raw.get(section)
        if table is None:
            table = {}
        if not isinstance(table, dict):
            continue  # reported by validation
        file_key = f"{key}_file"
        file_value = table.get(file_key)
        if file_value:
            source = sources.get((section, file_key), "settings")
            if table.get(key):
                problems.append(
                    f"{source}: {section}.{key}: set either {key} or {file_key}, not both"
                )
                continue
            from_file = _read_secret_file(
                file_value, source, config_path, f"{section}.{file_key}", problems
            )
            if from_file is None:
                continue
            table[key] = from_file
            sources[(section, key)] = f"{source} ({section}.{file_key})"
            raw[section] = table
        elif not table.get(key) and credentials:
            credential = Path(credentials) / f"{section}.{key}"
            if not credential.exists():
                continue
            secret = _read_secret(credential)
            if isinstance(secret, OSError):
                problems.append(
                    f"credential {credential}: {section}.{key}: cannot read: {secret.strerror}"
                )
                continue
            if secret:
                table[key] = secret
                sources[(section, key)] = f"credential {credential}"
                raw[section] = table


def _resolve_named_tokens(
    raw: dict[str, Any],
    sources: dict[Key, str],
    config_path: Path | None,
    env: Mapping[str, str],
    problems: list[str],
) -> None:
    """Add ``api.token_files`` and the credentials ``api.tokens.NAME`` to ``api.tokens``.

    A name given inline or in ``token_files`` wins over a credential of the same name, as
    for the other secrets; a name both inline and in ``token_files`` is an error."""
    table = raw.get("api", {})
    if not isinstance(table, dict):
        return  # reported by validation
    tokens, files = table.get("tokens", {}), table.get("token_files", {})
    if not isinstance(tokens, dict) or not isinstance(files, dict):
        return  # reported by validation
    tokens = dict(tokens)
    for name, file_value in files.items():
        source = sources.get(("api", "token_files"), "settings")
        if name in tokens:
            problems.append(f"{source}: api.tokens.{name}: set in tokens or token_files, not both")
            continue
        from_file = _read_secret_file(
            file_value, source, config_path, f"api.token_files.{name}", problems
        )
        if from_file is None:
            continue
        tokens[name] = from_file
    credentials = env.get(CREDENTIALS_ENV, "")
    prefix = "api.tokens."
    if credentials and Path(credentials).is_dir():
        for credential in sorted(Path(credentials).glob(prefix + "*")):
            name = credential.name.removeprefix(prefix)
            if name in tokens:
                continue
            secret = _read_secret(credential)
            if isinstance(secret, OSError):
                problems.append(f"credential {credential}: api.tokens.{name}: cannot read")
                continue
            if secret:  # an empty credential file means "not set", as for the other secrets
                tokens[name] = secret
                sources[("api", "tokens")] = f"credential {credential}"
    if tokens:
        table["tokens"] = tokens
        raw["api"] = table


def _read_secret_file(
    file_value: object, source: str, config_path: Path | None, key: str, problems: list[str]
) -> str | None:
    """The secret in the file a setting ``key`` names (relative to the config file when given
    there); None, with the problem noted, when it cannot be read."""
    secret_path = Path(str(file_value))
    if not secret_path.is_absolute() and source == str(config_path):
        secret_path = Path(source).parent / secret_path
    secret = _read_secret(secret_path)
    if isinstance(secret, OSError):
        problems.append(f"{source}: {key}: cannot read {str(secret_path)!r}: {secret.strerror}")
        return None
    return secret


def _read_secret(path: Path) -> str | OSError:
    try:
        return path.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        return exc


def _describe(
    exc: ValidationError, sources: Mapping[Key, str], config_path: Path | None
) -> list[str]:
    lines = []
    for error in exc.errors():
        loc = tuple(str(part) for part in error["loc"])
        dotted = ".".join(loc) if loc else "(top level)"
        source = _source_of(loc, sources, config_path)
        if error["type"] == "extra_forbidden":
            reason = "unknown key" + _suggestion(loc)
        else:
            reason = str(error["msg"]).removeprefix("Value error, ")
            value = error.get("input")
            if _is_leaf(loc) and not _is_secret(loc) and not isinstance(value, dict):
                reason += f" (got {value!r})"
        lines.append(f"{source}: {dotted}: {reason}")
    return lines


def _source_of(loc: Key, sources: Mapping[Key, str], config_path: Path | None) -> str:
    for end in range(len(loc), 0, -1):
        if loc[:end] in sources:
            return sources[loc[:end]]
    return str(config_path) if config_path is not None else "settings"


def _suggestion(loc: Key) -> str:
    model: type[BaseModel] = Settings
    for part in loc[:-1]:
        annotation = model.model_fields[part].annotation if part in model.model_fields else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return ""
        model = annotation
    close = difflib.get_close_matches(loc[-1], list(model.model_fields), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _is_leaf(loc: Key) -> bool:
    return len(loc) == 2


def _is_secret(loc: Key) -> bool:
    return len(loc) == 2 and ((loc[0], loc[1]) in SECRET_KEYS or loc == ("api", "tokens"))
