"""A SIP worker process (``python -m daemon.worker``): see :mod:`daemon.worker.process`."""
