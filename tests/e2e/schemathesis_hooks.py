"""schemathesis hooks for tests/e2e/test_schemathesis.py: an SDP offer goes as text."""

import schemathesis

schemathesis.serializer.alias("application/sdp", "text/plain")
