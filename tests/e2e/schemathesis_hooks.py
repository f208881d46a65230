"""schemathesis hooks for tests/e2e/test_schemathesis.py: an SDP offer goes as text, and a
generated POST /call body keeps each option's dtmf key unique.

The uniqueness of the keys across a choice's options is a rule no JSON schema keyword states
(``uniqueItems`` compares whole options), so a generated body could break it while valid
under the spec; the daemon rightly refuses such a body with 400. The hook clears the repeats
(later options lose theirs), which keeps the body what it was under the spec."""

from typing import Any

import schemathesis

schemathesis.serializer.alias("application/sdp", "text/plain")


@schemathesis.hook
def map_body(ctx: Any, body: Any) -> Any:
    operation = getattr(ctx, "operation", None)
    if operation is None or (operation.method.upper(), operation.path) != ("POST", "/call"):
        return body
    choice = body.get("choice") if isinstance(body, dict) else None
    options = choice.get("options") if isinstance(choice, dict) else None
    if not isinstance(options, list):
        return body
    seen: set[str] = set()
    for option in options:
        if isinstance(option, dict) and isinstance(option.get("dtmf"), str):
            if option["dtmf"] in seen:
                option["dtmf"] = None
            else:
                seen.add(option["dtmf"])
    return body
