"""The sipai supervisor (CLI, lifecycle, SIP workers, store) and the flows its workers run."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sip-ai-assistant")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
