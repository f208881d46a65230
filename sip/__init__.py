"""The SIP worker: one pjsua2 endpoint per process, its calls, audio ports and IPC end."""
