"""The SIP worker: one pjsua2 endpoint per process, its calls, audio ports and IPC end."""

import media  # noqa: F401 - before numpy loads: pins its BLAS to one thread
