"""Call recordings: the worker's writer thread (:mod:`daemon.recording.writer`) and the
dialer that records the outbound calls it places (:mod:`daemon.recording.dialer`)."""
