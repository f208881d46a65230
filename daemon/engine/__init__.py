"""The embedded realtime engine: the OpenAI Realtime protocol served at ``/v1/realtime``."""
