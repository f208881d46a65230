"""The compiled part of the package: the media core's per-frame loops (media/_kernels.c).

Everything else is declared in pyproject.toml. Building needs gcc and the Python headers
(Debian: gcc, python3-dev); `make run` and `make test` install them when missing.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "media._kernels",
            sources=["media/_kernels.c"],
            extra_compile_args=["-O3", "-std=c11", "-Wall", "-Wextra"],
        )
    ]
)
