"""Settings: the TOML schema, its loader (file, environment, credentials) and the example."""

from config.loader import CONFIG_ENV, ConfigError, LoadedSettings, load_settings
from config.schema import Settings

__all__ = ["CONFIG_ENV", "ConfigError", "LoadedSettings", "Settings", "load_settings"]
