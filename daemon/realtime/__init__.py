"""Realtime model sessions: the OpenAI Realtime protocol (GA and beta), any backend."""
