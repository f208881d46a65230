"""The media core: G.711, resampling, playout and VAD over numpy arrays. Pure code, no I/O."""
