"""The supervisor's HTTP API (Starlette, served by uvicorn inside the daemon's loop)."""
