"""The media core: G.711, resampling, playout and VAD over numpy arrays. Pure code, no I/O."""

# The per-frame loops are compiled at install time; say how to get them rather than fail on
# the first module that uses them with a bare ImportError.
try:
    from media import _kernels as _kernels
except ImportError as error:  # pragma: no cover - a broken install, not a code path
    raise ImportError(
        "media._kernels (the compiled media kernels) is not built: reinstall the package "
        "with `pip install -e .` or `make`, which needs gcc and the Python headers "
        "(Debian: apt-get install gcc python3-dev)"
    ) from error
