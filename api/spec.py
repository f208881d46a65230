"""Our OpenAPI document (``api/openapi.yaml``: the contract plus our additions)."""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from typing import Any

import yaml


@cache
def load_spec() -> dict[str, Any]:
    text = files("api").joinpath("openapi.yaml").read_text(encoding="utf-8")
    spec: dict[str, Any] = yaml.safe_load(text)
    return spec
